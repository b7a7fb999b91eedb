"""IndeCateR matches the exact ELBO gradient (enumeration) in expectation.

Each draw averages a few vectorised particles; 40 draws give a z-score per parameter
component. A component that IndeCateR computes exactly (a site with one variable per plate
element and nothing sampled below it, as in the mixture of experts) differs from the exact
value by float32 rounding only: a floor of 1e-6 relative on the standard error keeps that
from reading as a bias (as in ``test_unbiased_unordered_set.py``).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from infer.problems import (
    PROBLEMS,
    Problem,
    estimator_draws,
    index_categorical,
    max_abs_z_floored,
)

from pyro_discrete.infer import DiscreteELBO, SiteError
from pyro_discrete.infer.evaluation import Evaluation

NUM_DRAWS = 40
PARTICLES = 10
Z_LIMIT = 4.5


def _elbo(particles: int = PARTICLES, **options) -> DiscreteELBO:
    return DiscreteELBO(
        "indecater",
        num_particles=particles,
        vectorize_particles=particles > 1,
        max_plate_nesting=2,
        estimator_options=options,
    )


def _z(problem: Problem, elbo: DiscreteELBO, draws: int = NUM_DRAWS, seed: int = 0) -> float:
    exact = problem.exact()
    z = max_abs_z_floored(estimator_draws(problem, elbo, draws, seed), exact)
    print(f"{problem.name:20s} indecater max|z| = {z:.2f}")
    return z


# sbn_two_layer: Bernoulli bits (to_event), two layers, the second drawn given the first;
# categorical_chain: one-hot, two layers; mixture_of_experts: one one-hot per datum;
# global_and_local: a global site above a plate; nested_plates: two plates.
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_unbiased(problem):
    assert _z(PROBLEMS[problem](), _elbo()) < Z_LIMIT


def test_unbiased_on_index_categorical_sites():
    assert _z(index_categorical(), _elbo()) < Z_LIMIT


def test_unbiased_with_one_particle_and_no_particle_plate():
    assert _z(PROBLEMS["sbn_two_layer"](), _elbo(particles=1), draws=80) < Z_LIMIT


def test_unbiased_with_one_pass_per_changed_value():
    assert _z(PROBLEMS["categorical_chain"](), _elbo(vectorize=False)) < Z_LIMIT


def test_one_variable_per_datum_and_nothing_below_is_summed_exactly():
    """The mixture of experts' gate is one 3-way variable per datum with no site below it:
    IndeCateR sums it exactly, so every draw of the guide's gradient is the exact one."""
    problem = PROBLEMS["mixture_of_experts"]()
    exact = problem.exact()
    draws = estimator_draws(problem, _elbo(particles=2), 3)
    for name in problem.guide_params:
        for draw in draws[name]:
            torch.testing.assert_close(draw, exact[name], rtol=1e-4, atol=1e-5)


def test_batched_chunked_and_looped_passes_agree():
    """Without sites below the changed one, the passes are deterministic: one batch, batches
    of one value and one pass per value give the same gradient."""
    problem = PROBLEMS["mixture_of_experts"]()
    results = [
        estimator_draws(problem, _elbo(particles=2, **options), 2, seed=3)
        for options in ({}, {"chunk_size": 1}, {"vectorize": False})
    ]
    for other in results[1:]:
        for name, value in results[0].items():
            torch.testing.assert_close(other[name], value)


def test_z_test_sees_a_later_site_kept_at_its_base_value(monkeypatch):
    """Power: keeping the guide sites below the changed site at their base-pass values
    (instead of drawing them afresh given the changed value) is biased, and the z-test
    sees it on the two-layer belief net, whose second layer is drawn given the first."""
    keep = Evaluation.prefix_choice

    def later_sites_kept(self, site, at_site, after):
        return keep(self, site, at_site, lambda msg: self._base_value(msg["name"]))

    monkeypatch.setattr(Evaluation, "prefix_choice", later_sites_kept)
    assert _z(PROBLEMS["sbn_two_layer"](), _elbo()) > 3 * Z_LIMIT


# -- where the estimator does not apply --------------------------------------------------


def _local_bits_with_a_global_cost() -> Problem:
    """Bits per datum whose sum is observed outside the data plate."""
    n = 3
    init = {"q": torch.zeros(n)}

    def model():
        with pyro.plate("data", n, dim=-1):
            bits = pyro.sample("bits", dist.Bernoulli(0.5 * torch.ones(n)))
        pyro.sample("total", dist.Normal(bits.sum(-1), 1.0), obs=torch.tensor(2.0))

    def guide():
        with pyro.plate("data", n, dim=-1):
            pyro.sample("bits", dist.Bernoulli(logits=pyro.param("q")))

    return Problem("local_bits_with_a_global_cost", model, guide, (), init)


def test_a_cost_outside_the_sites_plate_is_refused():
    problem = _local_bits_with_a_global_cost()
    problem.reset()
    with pytest.raises(SiteError, match=r"model cost of site 'total'.*'bits'.*'data'.*rloo"):
        _elbo(particles=1).loss_and_grads(problem.model, problem.guide)


def test_a_site_without_finite_support_is_refused():
    def model():
        pyro.sample("count", dist.Poisson(3.0))

    def guide():
        pyro.sample("count", dist.Poisson(pyro.param("rate", torch.tensor(2.0))))

    with pytest.raises(SiteError, match=r"site 'count'.*Poisson.*'indecater'"):
        _elbo(particles=1).loss_and_grads(model, guide)


def test_a_program_that_cannot_take_the_extra_batch_dim_is_told_to_loop():
    """A model that reshapes with a fixed size fails on the batch of changed values; the
    error says how to evaluate them one at a time, which then works and is unbiased."""
    n, d = 2, 2
    y = torch.tensor([0.3, -1.2])
    init = {"q": torch.tensor([[0.2, -0.4], [1.0, 0.1]]), "w": torch.tensor([1.5, -0.5])}

    def model():
        with pyro.plate("data", n, dim=-1):
            prior = dist.Bernoulli(0.5 * torch.ones(n, d)).to_event(1)
            bits = pyro.sample("bits", prior)
            mean = bits.reshape(n, d) @ pyro.param("w")  # no room for a batch dim
            pyro.sample("y", dist.Normal(mean, 1.0), obs=y)

    def guide():
        with pyro.plate("data", n, dim=-1):
            pyro.sample("bits", dist.Bernoulli(logits=pyro.param("q")).to_event(1))

    problem = Problem("fixed_shape", model, guide, (), init)
    problem.reset()
    elbo = DiscreteELBO("indecater", max_plate_nesting=1)
    with pytest.raises(SiteError, match=r"'bits'.*'vectorize': False"):
        elbo.loss_and_grads(model, guide)
    looped = DiscreteELBO("indecater", max_plate_nesting=1, estimator_options={"vectorize": False})
    assert _z(problem, looped, draws=60) < Z_LIMIT


@pytest.mark.parametrize(
    "options, error",
    [
        ({"chunk_size": 0}, ValueError),
        ({"vectorize": "yes"}, TypeError),
        ({"chunks": 2}, TypeError),
    ],
)
def test_bad_options_are_refused(options, error):
    with pytest.raises(error, match="indecater"):
        DiscreteELBO("indecater", estimator_options=options)


def test_lower_variance_than_rloo_at_equal_evaluations():
    """On the nested plates (a row bit, and a cell bit below it: one variable each per
    plate element), IndeCateR with one particle evaluates the model 1 + 1 + 1 = 3 times per
    step; RLOO with K = 3 particles as often. Measured ratio of the guide-gradient
    variances about 0.1 (docs/choosing.md); asserted below 0.5."""
    variances = {}
    for label, elbo in (
        ("indecater", _elbo(particles=1)),
        ("rloo", DiscreteELBO("rloo", num_particles=3, max_plate_nesting=2)),
    ):
        problem = PROBLEMS["nested_plates"]()
        draws = estimator_draws(problem, elbo, 100, seed=7)
        variances[label] = sum(draws[k].var(0).sum().item() for k in problem.guide_params)
    print(variances)
    assert variances["indecater"] < 0.5 * variances["rloo"]


def test_the_cli_name_trains_a_two_layer_belief_net():
    """``--estimator indecater`` builds its ELBO; a step of a two-layer belief net (plates
    allocated by Pyro, ``to_event`` bits) moves both encoders."""
    from pyro.infer import SVI

    from pyro_discrete.cli.tasks import make_elbo
    from pyro_discrete.models import SigmoidBeliefNet

    pyro.set_rng_seed(0)
    vae = SigmoidBeliefNet(x_dim=6, latent_dims=(3, 2))
    x = torch.bernoulli(torch.full((5, 6), 0.4))
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), make_elbo("indecater"))
    before = [p.detach().clone() for p in vae.encoder.parameters()]
    loss = svi.step(x)
    assert torch.isfinite(torch.tensor(loss))
    moved = [not torch.equal(b, p) for b, p in zip(before, vae.encoder.parameters(), strict=True)]
    assert all(moved)
