"""The expectation model inside DiscreteELBO: hard forward values, a mean gradient close to
the exact one (enumeration) once its network has regressed, a much lower variance than the
unbiased targets it is trained on, and its network kept in the param store."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from infer.problems import PROBLEMS, index_categorical
from infer.test_reinmax import gaussian_bits

from pyro_discrete.infer import ESTIMATORS, DiscreteELBO, ExpectationModel_ELBO, SiteError

PARTICLES = 4


def train_then_draw(problem, estimator: str, steps: int, draws: int, **options):
    """Guide gradients at the problem's fixed parameters: ``steps`` steps that train only
    the estimator's own networks, then ``draws`` estimates (the networks still learning,
    as during training). Returns ``(draws per guide parameter, exact gradients)``."""
    exact = problem.exact()
    problem.reset()
    pyro.set_rng_seed(0)
    elbo = DiscreteELBO(
        estimator,
        num_particles=PARTICLES,
        vectorize_particles=True,
        max_plate_nesting=1,
        **options,
    )
    params = problem.params()
    store = pyro.get_param_store()
    optim = None
    out = {k: [] for k in problem.guide_params}
    for i in range(steps + draws):
        for p in store.values():
            p.grad = None
        elbo.loss_and_grads(problem.model, problem.guide, *problem.args)
        if i >= steps:
            for k in out:
                out[k].append(-params[k].grad.clone())
        own = [p for name, p in store.named_parameters() if name.startswith("pyro_discrete/")]
        if own:
            optim = optim or torch.optim.Adam(own, lr=0.01)
            optim.step()
    return {k: torch.stack(v) for k, v in out.items()}, exact


def distance(draws, exact) -> float:
    return sum(((d.mean(0) - exact[k]) ** 2).sum() for k, d in draws.items()).item() ** 0.5


def log_variance(draws) -> float:
    flat = torch.cat([d.reshape(d.shape[0], -1) for d in draws.values()], 1)
    return flat.var(0).mean().log().item()


def test_close_to_the_exact_gradient_with_less_variance_than_its_targets():
    """After 300 regression steps at fixed parameters the mean gradient is within 25% of the
    exact one (measured: 15%; straight-through is 36% off there); the variance is far below
    RLOO's, whose per-sample gradients are the regression targets. A wrong target (no score
    factor, or the wrong sign) or the targets used in place of the prediction would fail
    one of the two."""
    problem = gaussian_bits()
    model_draws, exact = train_then_draw(problem, "expectation_model", 300, 60)
    norm = sum((e**2).sum() for k, e in exact.items() if k in model_draws).item() ** 0.5
    rloo_draws, _ = train_then_draw(gaussian_bits(), "rloo", 0, 60)
    d_model, d_rloo = distance(model_draws, exact), distance(rloo_draws, exact)
    print(
        f"|mean - exact| / |exact|: expectation model {d_model / norm:.3f}, rloo "
        f"{d_rloo / norm:.3f}; log-variance {log_variance(model_draws):.2f} vs "
        f"{log_variance(rloo_draws):.2f}"
    )
    assert d_model < 0.25 * norm
    assert log_variance(model_draws) < log_variance(rloo_draws) - 2


def test_mixture_of_experts_closer_than_straight_through():
    model_draws, exact = train_then_draw(
        PROBLEMS["mixture_of_experts"](), "expectation_model", 300, 60
    )
    st_draws, _ = train_then_draw(PROBLEMS["mixture_of_experts"](), "st", 0, 60)
    print(f"|mean - exact|: expectation model {distance(model_draws, exact):.3f}, "
          f"st {distance(st_draws, exact):.3f}")
    assert distance(model_draws, exact) < 0.7 * distance(st_draws, exact)


def test_forward_values_are_hard_and_the_single_sample_target_is_used():
    assert ESTIMATORS["expectation_model"] is ExpectationModel_ELBO
    problem = PROBLEMS["categorical_chain"]()
    problem.reset()
    elbo = ExpectationModel_ELBO(max_plate_nesting=1)
    _, guide_trace = elbo._get_trace(problem.model, problem.guide, problem.args, {})
    for name in ("a", "b"):
        value = guide_trace.nodes[name]["value"]
        assert not value.requires_grad
        assert bool((((value == 0) | (value == 1)).all(-1) & (value.sum(-1) == 1)).all())
    # one particle: REINFORCE with a decaying-average baseline, whose state is written
    pyro.set_rng_seed(1)
    loss = elbo.loss_and_grads(problem.model, problem.guide, *problem.args)
    pyro.set_rng_seed(1)
    assert loss == pytest.approx(elbo.loss(problem.model, problem.guide, *problem.args))
    store = pyro.get_param_store()
    assert "pyro_discrete/expectation_model/a/average" in store
    assert float(store["pyro_discrete/expectation_model/a/average"].detach()) != 0.0


def test_network_is_saved_and_restored_with_the_param_store(tmp_path):
    problem = gaussian_bits()
    problem.reset()
    elbo = DiscreteELBO("expectation_model", max_plate_nesting=1)
    pyro.set_rng_seed(0)
    elbo.loss_and_grads(problem.model, problem.guide, *problem.args)
    names = [n for n in pyro.get_param_store().keys() if "expectation_model/b/network" in n]
    assert names, "the network is registered in the param store"
    with torch.no_grad():
        for name in names:
            pyro.param(name).add_(0.5)  # a trained network differs from its initial one
    path = tmp_path / "params.pt"
    pyro.get_param_store().save(path)

    def guide_gradient(estimator_elbo):
        params = problem.params()
        for p in pyro.get_param_store().values():
            p.grad = None
        pyro.set_rng_seed(3)
        estimator_elbo.loss_and_grads(problem.model, problem.guide, *problem.args)
        return params["q"].grad.clone()

    before = guide_gradient(elbo)
    pyro.clear_param_store()
    pyro.get_param_store().load(path)
    fresh = DiscreteELBO("expectation_model", max_plate_nesting=1)
    torch.testing.assert_close(guide_gradient(fresh), before)


def test_index_categorical_and_bad_options_are_refused():
    problem = index_categorical()
    problem.reset()
    elbo = DiscreteELBO("expectation_model", max_plate_nesting=1)
    with pytest.raises(SiteError, match="site 'c'.*OneHotCategorical"):
        elbo.loss_and_grads(problem.model, problem.guide, *problem.args)
    with pytest.raises(TypeError, match="expectation_model.*hiden.*hidden"):
        DiscreteELBO("expectation_model", hiden=(8,))


def test_user_network_is_used():
    calls = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(1, 1)

        def forward(self, x):
            calls.append(x.shape)
            return self.linear(x)

    def model():
        pyro.sample("b", dist.Bernoulli(0.5))

    def guide():
        pyro.sample("b", dist.Bernoulli(logits=pyro.param("q", torch.tensor(0.2))))

    pyro.clear_param_store()
    DiscreteELBO("expectation_model", network=Net()).loss_and_grads(model, guide)
    assert calls == [torch.Size([1])]
    assert "pyro_discrete/expectation_model/b/network$$$linear.weight" in pyro.get_param_store()
