"""``vectorize_particles=False`` for RLOO and VIMCO: particles drawn one after another, the
estimator applied across them (issue 22: Pyro's indexing idiom broke under the always
vectorised particle dim); and the vectorised path names the site and the fix."""

from __future__ import annotations

import dataclasses

import pyro
import pyro.distributions as dist
import pytest
import torch
from infer.problems import PROBLEMS, estimator_draws, index_categorical, max_abs_z

from pyro_discrete.infer import DiscreteELBO, SiteError
from pyro_discrete.testing import exact_gradients, exact_iwae_bound

Z_LIMIT = 4.5
DRAWS = 40


def _copied(problem, copies: int):
    """The problem in an outer plate of independent copies at dim -2: one step sums
    ``copies`` independent estimates, whose exact mean is ``copies`` times the problem's."""

    def inside(fn):
        def wrapped(*args):
            with pyro.plate("copies", copies, dim=-2):
                return fn(*args)

        return wrapped

    return dataclasses.replace(problem, model=inside(problem.model), guide=inside(problem.guide))


def _looped(estimator: str, k: int, **kwargs) -> DiscreteELBO:
    return DiscreteELBO(estimator, num_particles=k, vectorize_particles=False, **kwargs)


@pytest.mark.parametrize("problem_name", ["sbn_two_layer", "categorical_chain", "global_and_local"])
def test_looped_rloo_is_unbiased(problem_name):
    problem = PROBLEMS[problem_name]()
    exact = {k: 10 * g for k, g in problem.exact().items()}
    draws = estimator_draws(_copied(problem, 10), _looped("rloo", 4), DRAWS)
    assert max_abs_z(draws, exact) < Z_LIMIT


def test_looped_rloo_on_index_categoricals_is_unbiased():
    problem = index_categorical()
    exact = {k: 10 * g for k, g in problem.exact().items()}
    draws = estimator_draws(_copied(problem, 10), _looped("rloo", 4), DRAWS)
    assert max_abs_z(draws, exact) < Z_LIMIT


def test_looped_vimco_matches_the_exact_joint_bound_gradient():
    """A global latent: the K = 2 bound is over the whole minibatch, as vectorised (40
    copies of the model, each its own bound)."""
    problem = PROBLEMS["global_and_local"]()
    problem.reset()
    bound = exact_iwae_bound(problem.model, problem.guide, 2, *problem.args)
    exact = exact_gradients(40 * bound, problem.params())
    draws = estimator_draws(_copied(problem, 40), _looped("vimco", 2), DRAWS)
    assert max_abs_z(draws, exact) < Z_LIMIT


def test_looped_vimco_reports_minus_the_bound():
    """``loss`` and ``loss_and_grads`` agree at one seed and estimate minus the bound (40
    copies of the model per step, 40 steps)."""
    problem = PROBLEMS["global_and_local"]()
    problem.reset()
    with torch.no_grad():
        bound = float(exact_iwae_bound(problem.model, problem.guide, 2, *problem.args))
    copied = _copied(problem, 40)
    elbo = _looped("vimco", 2)
    pyro.set_rng_seed(1)
    loss = elbo.loss(copied.model, copied.guide, *copied.args)
    pyro.set_rng_seed(1)
    assert elbo.loss_and_grads(copied.model, copied.guide, *copied.args) == pytest.approx(loss)
    losses = torch.tensor(
        [elbo.loss(copied.model, copied.guide, *copied.args) for _ in range(DRAWS)]
    )
    z = (losses.mean() + 40 * bound) / (losses.std() / DRAWS**0.5)
    assert abs(float(z)) < Z_LIMIT


# Pyro's HMM idiom: a table row picked by the previous state, and an emission probability
# looked up with further indexing. With a vectorised particle dim, `emission[x]` has the
# particles first and `[y]` then indexes them: an IndexError from inside the model.
STATES, SYMBOLS = 3, 6
OBSERVED = [5, 4, 5, 3]


def hmm_model():
    transition = pyro.param(
        "transition", torch.full((STATES, STATES), 1 / STATES), constraint=dist.constraints.simplex
    )
    emission = pyro.param(
        "emission",
        lambda: torch.rand(STATES, SYMBOLS, generator=torch.Generator().manual_seed(0)).softmax(-1),
        constraint=dist.constraints.simplex,
    )
    x = 0
    for t, y in enumerate(OBSERVED):
        x = pyro.sample(f"x_{t}", dist.Categorical(transition[x]))
        pyro.factor(f"y_{t}", emission[x][y].log())


def hmm_guide():
    logits = pyro.param("logits", torch.zeros(len(OBSERVED), STATES))
    for t in range(len(OBSERVED)):
        pyro.sample(f"x_{t}", dist.Categorical(logits=logits[t]))


@pytest.mark.parametrize("estimator", ["rloo", "vimco"])
def test_vectorised_particles_break_the_idiom_with_a_message_naming_the_site_and_fix(estimator):
    elbo = DiscreteELBO(estimator, num_particles=4, max_plate_nesting=0)
    with pytest.raises(SiteError, match=r"IndexError.*after sample site 'x_0'.*Vindex") as info:
        elbo.loss_and_grads(hmm_model, hmm_guide)
    assert "vectorize_particles=False" in str(info.value)
    assert isinstance(info.value.__cause__, IndexError)


@pytest.mark.parametrize("estimator", ["rloo", "vimco"])
def test_looped_particles_run_the_idiom(estimator):
    elbo = _looped(estimator, 4)
    pyro.set_rng_seed(0)
    loss = elbo.loss_and_grads(hmm_model, hmm_guide)
    grad = pyro.param("logits").unconstrained().grad
    assert torch.isfinite(torch.tensor(loss)) and grad is not None
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_looped_particles_refuse_an_estimator_that_needs_a_batch():
    """A site overriding the looped RLOO with RODEO (vectorised only) is refused by name."""

    def model():
        pyro.sample("z", dist.Bernoulli(0.5))

    def guide():
        p = pyro.param("p", torch.tensor(0.3))
        pyro.sample("z", dist.Bernoulli(logits=p), infer={"estimator": "rodeo"})

    with pytest.raises(
        SiteError, match="site 'z' uses estimator 'rodeo'.*vectorize_particles=True"
    ):
        _looped("rloo", 3).loss_and_grads(model, guide)
