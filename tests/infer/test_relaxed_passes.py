"""REBAR / RELAX: the 2L relaxed passes of L sites as one vectorised (stacked) pass.

The stacked pass must give the looped passes' gradient to float rounding (same seeds),
evaluate the model once instead of 2L times, and fall back to the loop, with the same
result, where the model cannot be stacked.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from infer.problems import PROBLEMS

from pyro_discrete.infer import DiscreteELBO

STEPS = 3  # step 1 loops and tries the stack; steps 2 and 3 are stacked


def _structures(elbo: DiscreteELBO) -> list:
    return list(elbo._structures.values())


def _gradients(problem, elbo: DiscreteELBO, seed: int = 0, steps: int = STEPS) -> list:
    """Each step's gradients of the problem's parameters (same seed, same parameters)."""
    problem.reset()
    pyro.set_rng_seed(seed)
    params = problem.params()
    out = []
    for _ in range(steps):
        for p in params.values():
            p.grad = None
        elbo.loss_and_grads(problem.model, problem.guide, *problem.args)
        out.append({k: p.grad.clone() for k, p in params.items() if p.grad is not None})
    return out


def _elbo(estimator: str, stacked: bool, particles: int) -> DiscreteELBO:
    options = {"hidden": (8,)} if estimator == "relax" else {}
    return DiscreteELBO(
        estimator=estimator,
        num_particles=particles,
        vectorize_particles=particles > 1,
        max_plate_nesting=2,
        vectorize_passes=stacked,
        **options,
    )


@pytest.mark.parametrize("particles", [1, 4])
@pytest.mark.parametrize("estimator", ["rebar", "relax"])
@pytest.mark.parametrize("problem_name", ["sbn_two_layer", "categorical_chain"])
def test_stacked_passes_give_the_looped_gradient(problem_name, estimator, particles):
    problem = PROBLEMS[problem_name]()
    stacked = _elbo(estimator, True, particles)
    looped = _elbo(estimator, False, particles)
    got = _gradients(problem, stacked)
    want = _gradients(problem, looped)
    (structure,) = _structures(stacked)
    assert structure.relaxed_stacking is True, structure.relaxed_stacking_reason
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.keys() == w.keys()
        for name in w:
            torch.testing.assert_close(
                g[name], w[name], rtol=1e-4, atol=1e-5, msg=f"step {step} param {name}"
            )


class _Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.mark.parametrize("estimator", ["rebar", "relax"])
def test_one_stacked_evaluation_instead_of_two_per_layer(estimator):
    problem = PROBLEMS["sbn_two_layer"]()  # L = 2 stochastic layers
    calls = {}
    for stacked in (True, False):
        model = _Counting(problem.model)
        elbo = _elbo(estimator, stacked, 1)
        problem.reset()
        pyro.set_rng_seed(0)
        for _ in range(STEPS):  # the first steps also find dependencies and check sites
            elbo.loss_and_grads(model, problem.guide, *problem.args)
        before = model.calls
        elbo.loss_and_grads(model, problem.guide, *problem.args)
        calls[stacked] = model.calls - before
    # the base pass and one stacked relaxed pass, against the base pass and 2L = 4
    assert calls == {True: 2, False: 5}


def _two_layers(reduce_everything: bool = False, continuous_after: bool = False):
    """A two-layer Bernoulli model written to broadcast, or not."""
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])

    def model(x):
        with pyro.plate("data", 2):
            z1 = pyro.sample("z1", dist.Bernoulli(logits=torch.zeros(2)).to_event(1))
            z2 = pyro.sample(
                "z2", dist.Bernoulli(logits=z1 @ pyro.param("V", torch.ones(2, 2))).to_event(1)
            )
            if continuous_after:
                pyro.sample("s", dist.Normal(0.0, 1.0))
            if reduce_everything:  # sums over every dim: it does not broadcast over passes
                pyro.factor("f", -(z2 @ pyro.param("U", torch.ones(2, 3)) - x).pow(2).sum())
            else:
                pyro.sample(
                    "x",
                    dist.Bernoulli(logits=z2 @ pyro.param("U", torch.ones(2, 3))).to_event(1),
                    obs=x,
                )

    def guide(x):
        with pyro.plate("data", 2):
            z1 = pyro.sample(
                "z1", dist.Bernoulli(logits=x @ pyro.param("W1", torch.zeros(3, 2))).to_event(1)
            )
            pyro.sample(
                "z2", dist.Bernoulli(logits=z1 @ pyro.param("W2", torch.zeros(2, 2))).to_event(1)
            )
            if continuous_after:
                pyro.sample("s", dist.Normal(pyro.param("m", torch.zeros(())), 1.0))

    return model, guide, x


def _steps(model, guide, x, stacked: bool) -> tuple[DiscreteELBO, list]:
    elbo = DiscreteELBO(estimator="rebar", vectorize_passes=stacked)
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    grads = []
    for _ in range(STEPS):
        for p in pyro.get_param_store().values():
            p.grad = None
        elbo.loss_and_grads(model, guide, x)
        store = pyro.get_param_store()
        grads.append({k: store[k].grad.clone() for k in ("W1", "W2")})
    return elbo, grads


@pytest.mark.parametrize(
    "case, reason",
    [
        ("reduce_everything", "different learning signal"),
        ("continuous_after", "guide site 's' is drawn afresh"),
    ],
)
def test_a_model_that_cannot_be_stacked_falls_back_to_the_loop(case, reason):
    model, guide, x = _two_layers(**{case: True})
    elbo, got = _steps(model, guide, x, True)
    _, want = _steps(model, guide, x, False)
    (structure,) = _structures(elbo)
    assert structure.relaxed_stacking is False
    assert reason in structure.relaxed_stacking_reason
    for g, w in zip(got, want, strict=True):
        for name in w:
            torch.testing.assert_close(g[name], w[name], rtol=0, atol=0)


def test_a_broadcasting_model_is_stacked():
    """The control case of the fallback test: the same model, broadcasting, is stacked."""
    model, guide, x = _two_layers()
    elbo, got = _steps(model, guide, x, True)
    _, want = _steps(model, guide, x, False)
    (structure,) = _structures(elbo)
    assert structure.relaxed_stacking is True, structure.relaxed_stacking_reason
    for g, w in zip(got, want, strict=True):
        for name in w:
            torch.testing.assert_close(g[name], w[name], rtol=1e-4, atol=1e-6)


def test_a_shape_error_in_the_stacked_pass_falls_back():
    """A guide that reshapes a sampled value to the data size cannot take the stacked dim."""
    model, _, x = _two_layers()

    def guide(x):
        with pyro.plate("data", 2):
            z1 = pyro.sample(
                "z1", dist.Bernoulli(logits=x @ pyro.param("W1", torch.zeros(3, 2))).to_event(1)
            )
            flat = z1.reshape(2, 2)  # reads the shape of one pass
            pyro.sample(
                "z2", dist.Bernoulli(logits=flat @ pyro.param("W2", torch.zeros(2, 2))).to_event(1)
            )

    elbo, got = _steps(model, guide, x, True)
    _, want = _steps(model, guide, x, False)
    (structure,) = _structures(elbo)
    assert structure.relaxed_stacking is False
    assert "RuntimeError" in structure.relaxed_stacking_reason
    for g, w in zip(got, want, strict=True):
        for name in w:
            torch.testing.assert_close(g[name], w[name], rtol=0, atol=0)
