"""ReinMax inside DiscreteELBO: hard forward values, and a mean gradient closer to the exact
one (enumeration) than straight-through's on models whose ELBO is quadratic in the sample."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from infer.problems import PROBLEMS, Problem, estimator_draws, max_abs_z

from pyro_discrete.infer import ESTIMATORS, DiscreteELBO, ReinMax_ELBO

NUM_DRAWS = 20
PARTICLES = 500


def gaussian_bits() -> Problem:
    """Three Bernoulli bits per datum (``to_event``) with a Gaussian likelihood whose mean
    is linear in them: the ELBO is quadratic in the single site's value."""
    n, d = 3, 3
    g = torch.Generator().manual_seed(7)
    y = torch.randn(n, generator=g)
    init = dict(prior=torch.randn(d, generator=g), w=torch.randn(d, generator=g))
    init.update(q=torch.randn(n, d, generator=g))

    def model(y):
        with pyro.plate("data", n, dim=-1):
            b = pyro.sample(
                "b", dist.Bernoulli(logits=pyro.param("prior").expand(n, d)).to_event(1)
            )
            pyro.sample("y", dist.Normal(b @ pyro.param("w"), 0.7), obs=y)

    def guide(y):
        with pyro.plate("data", n, dim=-1):
            pyro.sample("b", dist.Bernoulli(logits=pyro.param("q")).to_event(1))

    return Problem("gaussian_bits", model, guide, (y,), init, guide_params=("q",))


def _mean_gradient_distance(problem, estimator):
    exact = problem.exact()
    elbo = DiscreteELBO(
        estimator,
        num_particles=PARTICLES,
        vectorize_particles=True,
        max_plate_nesting=1,
        temperature=1.0,
    )
    draws = estimator_draws(problem, elbo, NUM_DRAWS)
    distance = sum(((d.mean(0) - exact[k]) ** 2).sum() for k, d in draws.items()) ** 0.5
    return distance.item(), max_abs_z(draws, exact)


@pytest.mark.parametrize("make", [gaussian_bits, PROBLEMS["mixture_of_experts"]])
def test_closer_to_the_exact_gradient_than_straight_through(make):
    """One site, f quadratic in it: at temperature 1 ReinMax is exact in expectation (the
    paper's second-order claim); straight-through is clearly biased."""
    reinmax, z_reinmax = _mean_gradient_distance(make(), "reinmax")
    straight, z_straight = _mean_gradient_distance(make(), "st")
    print(
        f"{make.__name__}: |mean - exact| reinmax {reinmax:.4f} (max|z| {z_reinmax:.1f}), "
        f"st {straight:.4f} (max|z| {z_straight:.1f})"
    )
    assert reinmax < 0.4 * straight
    assert z_reinmax < 4.5 < z_straight


@pytest.mark.parametrize("name", ["categorical_chain", "sbn_two_layer"])
def test_closer_than_straight_through_on_two_layer_models(name):
    """Two dependent sites: both biased, ReinMax less so."""
    reinmax, _ = _mean_gradient_distance(PROBLEMS[name](), "reinmax")
    straight, _ = _mean_gradient_distance(PROBLEMS[name](), "st")
    print(f"{name}: |mean - exact| reinmax {reinmax:.4f}, st {straight:.4f}")
    assert reinmax < 0.7 * straight


def test_sites_take_exact_hard_values_and_the_estimator_is_registered():
    assert ESTIMATORS["reinmax"] is ReinMax_ELBO
    problem = PROBLEMS["categorical_chain"]()
    problem.reset()
    elbo = ReinMax_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    model_trace, guide_trace = elbo._get_trace(problem.model, problem.guide, problem.args, {})
    for name in ("a", "b"):
        value = guide_trace.nodes[name]["value"]
        assert value.requires_grad
        assert bool((((value == 0) | (value == 1)).all(-1) & (value.sum(-1) == 1)).all())
    with pytest.raises(ValueError, match="temperature"):
        DiscreteELBO("reinmax", temperature=0.0)
