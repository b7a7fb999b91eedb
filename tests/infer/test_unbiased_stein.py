"""``double_cv`` and ``rodeo`` match the exact ELBO gradient (enumeration) in expectation.

Each estimate must stay a genuine K-sample estimate (K = 2, 4), so instead of the 200
particles of ``test_unbiased.py`` the model and guide run inside an outer plate of
``REPLICAS`` independent copies (dim -3, left of every plate of the problems). The copies
share the parameters, so the replicated ELBO is ``REPLICAS`` times the ELBO; every cost
lies in the replica plate, so each site's learning signals, value gradients and
leave-one-out / Stein terms are per replica, and the replicated estimate is the sum of
``REPLICAS`` independent K-sample estimates (the control-variate parameters are fixed
within a step). Dividing by ``REPLICAS`` gives their mean, whose z-score is tested as in
``test_unbiased.py``. The last tests check the harness's power: a 20% bias on a guide
gradient component is seen at K = 2 (z of 9 to 23 measured).
"""

from __future__ import annotations

import pyro
import pytest
import torch
from infer.problems import PROBLEMS, Problem, max_abs_z, replicated

from pyro_discrete.infer import DiscreteELBO, SiteError

NUM_DRAWS = 40
REPLICAS = 100
Z_LIMIT = 4.5
BERNOULLI = ["sbn_two_layer", "global_and_local", "nested_plates"]
CATEGORICAL = ["categorical_chain", "mixture_of_experts"]
# control variates switched on (their learned initial values are 0: plain RLOO)
OPTIONS = {
    "double_cv": {"alpha": 1.0},
    "rodeo": {"alpha": 1.0, "beta": 1.0, "hidden": (16,)},
}


def elbo_for(estimator: str, k: int, **options) -> DiscreteELBO:
    return DiscreteELBO(estimator, num_particles=k, max_plate_nesting=3, **options)


def draws_at_current_state(problem: Problem, elbo, num_draws: int) -> dict:
    """Mean-of-replicas estimates with the param store as it is (no reset)."""
    replicas = replicated(problem, REPLICAS)
    params = problem.params()
    out = {name: [] for name in params}
    for _ in range(num_draws):
        elbo.loss_and_grads(replicas.model, replicas.guide, *replicas.args)
        for name, p in params.items():
            out[name].append(-p.grad / REPLICAS)
        for _, value in pyro.get_param_store().named_parameters():
            value.grad = None
    return {name: torch.stack(v) for name, v in out.items()}


def check(problem_name: str, estimator: str, k: int, options: dict, seed: int = 0) -> float:
    problem = PROBLEMS[problem_name]()
    exact = problem.exact()
    problem.reset()
    pyro.set_rng_seed(seed)
    draws = draws_at_current_state(problem, elbo_for(estimator, k, **options), NUM_DRAWS)
    z = max_abs_z(draws, exact)
    print(f"{problem_name:18s} {estimator:10s} K={k} max|z| = {z:.2f}")
    return z


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("problem", BERNOULLI)
@pytest.mark.parametrize("estimator", list(OPTIONS))
def test_unbiased_k_sample(estimator, problem, k):
    assert check(problem, estimator, k, OPTIONS[estimator]) < Z_LIMIT


@pytest.mark.parametrize("estimator", list(OPTIONS))
def test_unbiased_with_control_variates_off(estimator):
    """Initial values (RLOO) and ``learn_control_variates=False`` at K = 3."""
    options = {**OPTIONS[estimator], "learn_control_variates": False}
    assert check("nested_plates", estimator, 3, options, seed=1) < Z_LIMIT
    assert not any(k.endswith(("alpha", "beta")) for k in pyro.get_param_store().keys())


def train_control_variates(problem: Problem, elbo, steps: int, lr: float = 0.02) -> None:
    """Adam on the ``pyro_discrete/`` parameters only: model and guide stay fixed."""
    replicas = replicated(problem, REPLICAS)
    optimizer = None
    for _ in range(steps):
        elbo.loss_and_grads(replicas.model, replicas.guide, *replicas.args)
        store = pyro.get_param_store()
        if optimizer is None:
            cv_params = [v for k, v in store.named_parameters() if k.startswith("pyro_discrete/")]
            optimizer = torch.optim.Adam(cv_params, lr=lr)
        optimizer.step()
        for _, value in store.named_parameters():
            value.grad = None


@pytest.mark.parametrize("k", [2, 4])
def test_rodeo_unbiased_after_training_its_control_variates(k):
    problem = PROBLEMS["sbn_two_layer"]()
    exact = problem.exact()
    problem.reset()
    pyro.set_rng_seed(3)
    elbo = elbo_for("rodeo", k, hidden=(16,))
    train_control_variates(problem, elbo, 40)
    store = pyro.get_param_store()
    betas = [store[name].item() for name in store.keys() if name.endswith("/beta")]
    assert len(betas) == 2 and max(abs(b) for b in betas) > 0.05, betas
    weights = [v for name, v in store.named_parameters() if name.endswith("control$$$0.weight")]
    assert len(weights) == 2  # one network per site
    z = max_abs_z(draws_at_current_state(problem, elbo, NUM_DRAWS), exact)
    print(f"rodeo trained K={k} max|z| = {z:.2f}")
    assert z < Z_LIMIT


def test_double_cv_unbiased_after_training_alpha():
    problem = PROBLEMS["global_and_local"]()
    exact = problem.exact()
    problem.reset()
    pyro.set_rng_seed(4)
    elbo = elbo_for("double_cv", 2)
    train_control_variates(problem, elbo, 40, lr=0.05)
    alphas = [v.item() for k, v in pyro.get_param_store().items() if k.endswith("/alpha")]
    assert max(abs(a) for a in alphas) > 0.3, alphas
    assert max_abs_z(draws_at_current_state(problem, elbo, NUM_DRAWS), exact) < Z_LIMIT


@pytest.mark.parametrize("estimator", list(OPTIONS))
@pytest.mark.parametrize("problem", CATEGORICAL)
def test_categorical_sites_are_refused_with_the_fix(estimator, problem):
    p = PROBLEMS[problem]()
    p.reset()
    with pytest.raises(SiteError) as info:
        elbo_for(estimator, 2).loss_and_grads(p.model, p.guide, *p.args)
    message = str(info.value)
    site = "a" if problem == "categorical_chain" else "expert"
    assert f"site '{site}'" in message and "OneHotCategorical" in message
    assert "'rloo'" in message and estimator in message


def test_one_sample_is_refused():
    with pytest.raises(ValueError, match="num_particles >= 2"):
        DiscreteELBO("rodeo", num_particles=1)


@pytest.mark.parametrize("estimator", ["rloo", *OPTIONS])
@pytest.mark.parametrize("factor", [1.2, 0.8])
def test_harness_detects_a_twenty_percent_bias_in_a_guide_gradient(estimator, factor):
    """K = 2, REPLICAS = 100, 40 draws: a 20% bias on the best-resolved component of a guide
    parameter (where the estimators differ; model gradients are pathwise) is seen."""
    problem = PROBLEMS["sbn_two_layer"]()
    exact = problem.exact()
    problem.reset()
    pyro.set_rng_seed(0)
    options = OPTIONS.get(estimator, {})
    draws = draws_at_current_state(problem, elbo_for(estimator, 2, **options), NUM_DRAWS)
    assert max_abs_z(draws, exact) < Z_LIMIT

    def resolution(name):  # |exact| / sd per component (a zero sd: a gradient always 0)
        return exact[name].abs().flatten() / (draws[name].std(0).flatten() + 1e-12)

    key = max(problem.guide_params, key=lambda name: resolution(name).max().item())
    biased = {name: d.clone() for name, d in draws.items()}
    biased[key].flatten(1)[:, resolution(key).argmax()] *= factor
    assert max_abs_z(biased, exact) > Z_LIMIT
