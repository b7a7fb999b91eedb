"""Every unbiased estimator matches the exact ELBO gradient (enumeration) in expectation.

Each draw averages 200 vectorised particles; 40 draws give a z-score per parameter
component. |z| < 4.5 over all components (about 30 per model) keeps the family-wise
false-alarm rate small; a 20% bias on one component is detected (see the last tests).
"""

from __future__ import annotations

import dataclasses
import math

import pyro
import pytest
import torch
from infer.problems import (
    PROBLEMS,
    draws_from_state,
    estimator_draws,
    index_categorical,
    max_abs_z,
    z_scores,
)

from pyro_discrete.infer import DiscreteELBO
from pyro_discrete.testing import exact_gradients, exact_iwae_bound

NUM_DRAWS = 40
PARTICLES = 200
Z_LIMIT = 4.5

SCORE_FUNCTION = {
    "reinforce": {},
    "nvil": {"normalize_variance": False},
    "muprop": {},
    "rloo": {},
}
RELAXATION = {
    "rebar": {},
    "rebar_fixed": {
        "estimator": "rebar",
        "learn_control_variates": False,
        "eta": 0.6,
        "temperature": 0.3,
    },
    "relax": {"hidden": (16,)},
    "relax_fixed": {
        "estimator": "relax",
        "learn_control_variates": False,
        "hidden": (16,),
        "eta": 0.8,
        "temperature": 0.4,
    },
}
ANTITHETIC = {"arm": {}, "disarm": {}}


def _elbo(label: str, options: dict) -> DiscreteELBO:
    options = dict(options)
    estimator = options.pop("estimator", label)
    return DiscreteELBO(
        estimator=estimator,
        num_particles=PARTICLES,
        vectorize_particles=True,
        max_plate_nesting=2,
        **options,
    )


def _check(problem_name: str, label: str, options: dict, seed: int = 0) -> float:
    problem = PROBLEMS[problem_name]()
    exact = problem.exact()
    draws = estimator_draws(problem, _elbo(label, options), NUM_DRAWS, seed)
    z = max_abs_z(draws, exact)
    print(f"{problem_name:20s} {label:12s} max|z| = {z:.2f}")
    return z


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("label", list(SCORE_FUNCTION) + list(RELAXATION))
def test_unbiased(problem, label):
    options = {**SCORE_FUNCTION, **RELAXATION}[label]
    assert _check(problem, label, options) < Z_LIMIT


@pytest.mark.parametrize("problem", ["sbn_two_layer", "global_and_local", "nested_plates"])
@pytest.mark.parametrize("label", list(ANTITHETIC))
def test_antithetic_unbiased(problem, label):
    assert _check(problem, label, ANTITHETIC[label]) < Z_LIMIT


def test_rebar_unbiased_after_training_control_variates():
    """Learned eta / temperature (moved away from their initial values) stay unbiased."""
    problem = PROBLEMS["sbn_two_layer"]()
    exact = problem.exact()
    problem.reset()
    elbo = _elbo("rebar", {})
    params = problem.params()
    for _ in range(30):  # train only the control variates, at fixed model parameters
        elbo.loss_and_grads(problem.model, problem.guide, *problem.args)
        with torch.no_grad():
            for name, value in pyro.get_param_store().named_parameters():
                if name.startswith("pyro_discrete/") and value.grad is not None:
                    value -= 0.05 * value.grad.sign()
                    value.grad = None
        for p in params.values():
            p.grad = None
    etas = [v.item() for k, v in pyro.get_param_store().items() if k.endswith("/eta")]
    assert any(abs(e - 1.0) > 0.1 for e in etas), etas
    state = pyro.get_param_store().get_state()
    draws = draws_from_state(problem, elbo, state, NUM_DRAWS, seed=5)
    assert max_abs_z(draws, exact) < Z_LIMIT


def test_vimco_matches_exact_iwae_gradient():
    """VIMCO's gradient is that of the per-datum K-sample bound (K = 3).

    The data are repeated 75 times: each step sums 75 independent per-datum estimates, so
    40 steps give the z-test the 3,000 estimates that 3,000 steps gave (same power, one
    fortieth of the steps)."""
    # Only local latents, so that the bound factorises over data (VIMCO's per-datum bound).
    problem = PROBLEMS["sbn_two_layer"]()
    k, copies = 3, 75
    problem.reset()
    x = problem.args[0]
    bound = sum(exact_iwae_bound(problem.model, problem.guide, k, x[i : i + 1]) for i in range(2))
    exact = exact_gradients(copies * bound, problem.params())
    repeated = dataclasses.replace(problem, args=(x.repeat(copies, 1),))
    elbo = DiscreteELBO("vimco", num_particles=k, max_plate_nesting=1)
    draws = estimator_draws(repeated, elbo, NUM_DRAWS)
    z = max_abs_z(draws, exact)
    print(f"vimco max|z| = {z:.2f}")
    assert z < Z_LIMIT
    # and the reported loss is minus the bound, in expectation
    repeated.reset()
    losses = torch.tensor(
        [elbo.loss(repeated.model, repeated.guide, *repeated.args) for _ in range(40)]
    )
    assert abs(losses.mean().item() + copies * bound.item()) < 4.5 * losses.std().item() / 40**0.5


def _in_copies(fn, copies: int):
    """``fn`` inside an outer plate of independent copies at dim -2."""

    def wrapped(*args):
        with pyro.plate("copies", copies, dim=-2):
            return fn(*args)

    return wrapped


@pytest.mark.parametrize("factor", [1.2, 0.8])
def test_z_test_detects_a_twenty_percent_bias(factor):
    """The harness has the power to see a 20% bias on one component."""
    problem = PROBLEMS["sbn_two_layer"]()
    exact = problem.exact()
    draws = estimator_draws(problem, _elbo("muprop", {}), NUM_DRAWS)
    assert max_abs_z(draws, exact) < Z_LIMIT
    z = z_scores(draws, exact)
    # bias the component that the test resolves best relative to its size
    key, index = max(
        ((k, i) for k in draws for i in range(draws[k][0].numel())),
        key=lambda ki: (
            abs(exact[ki[0]].flatten()[ki[1]].item())
            / (draws[ki[0]].flatten(1)[:, ki[1]].std().item() + 1e-12)
        ),
    )
    biased = {k: v.clone() for k, v in draws.items()}
    biased[key].flatten(1)[:, index] *= factor
    assert max_abs_z(biased, exact) > Z_LIMIT
    assert math.isfinite(max(v.abs().max().item() for v in z.values()))


def test_vimco_with_a_global_latent_uses_the_joint_bound():
    """A global latent couples the data: the bound is then over the whole minibatch.

    The model runs in an outer plate of 75 independent copies (each its own global latent
    and minibatch, so each its own joint bound): 40 steps give the 3,000 estimates of the
    z-test."""
    problem = PROBLEMS["global_and_local"]()
    copies = 75
    problem.reset()
    bound = exact_iwae_bound(problem.model, problem.guide, 2, *problem.args)
    exact = exact_gradients(copies * bound, problem.params())
    copied = dataclasses.replace(
        problem,
        model=_in_copies(problem.model, copies),
        guide=_in_copies(problem.guide, copies),
    )
    elbo = DiscreteELBO("vimco", num_particles=2, max_plate_nesting=2)
    draws = estimator_draws(copied, elbo, NUM_DRAWS)
    assert max_abs_z(draws, exact) < Z_LIMIT


@pytest.mark.parametrize("label", ["reinforce", "nvil", "rloo"])
def test_index_categorical_with_score_function_estimators(label):
    problem = index_categorical()
    exact = problem.exact()
    draws = estimator_draws(problem, _elbo(label, SCORE_FUNCTION[label]), NUM_DRAWS)
    assert max_abs_z(draws, exact) < Z_LIMIT
