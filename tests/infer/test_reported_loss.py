"""Every estimator reports minus the ELBO at hard samples (issue 22: ``"gumbel"`` reported
its relaxed objective, 6.17 nats on an HMM whose minus-ELBO was 6.73).

The reported loss of ``loss_and_grads`` (what ``SVI.step`` returns) is z-tested against the
exact minus-ELBO by enumeration: 30 draws of 100 vectorised particles, |z| <= 4.5.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from infer.problems import PROBLEMS
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_discrete.infer import DiscreteELBO
from pyro_discrete.testing import exact_elbo

DRAWS = 30
PARTICLES = 100
Z_LIMIT = 4.5

RELAXATION_ESTIMATORS = {
    "gumbel": {},
    "gumbel_cold": {"estimator": "gumbel", "temperature": 0.3, "min_temperature": 0.3},
    "st": {},
    "gumbel_rao": {"num_samples": 3},
    "reinmax": {},
    "rebar": {},
    "relax": {"hidden": (8,)},
}


def _elbo(label: str) -> DiscreteELBO:
    options = dict(RELAXATION_ESTIMATORS[label])
    return DiscreteELBO(
        estimator=options.pop("estimator", label),
        num_particles=PARTICLES,
        vectorize_particles=True,
        max_plate_nesting=2,
        **options,
    )


def _reported_losses(problem, elbo) -> torch.Tensor:
    problem.reset()
    pyro.set_rng_seed(0)
    losses = []
    for _ in range(DRAWS):
        losses.append(elbo.loss_and_grads(problem.model, problem.guide, *problem.args))
        for p in problem.params().values():
            p.grad = None
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("problem_name", ["sbn_two_layer", "categorical_chain"])
@pytest.mark.parametrize("label", list(RELAXATION_ESTIMATORS))
def test_reported_loss_is_minus_the_elbo_at_hard_samples(problem_name, label):
    problem = PROBLEMS[problem_name]()
    problem.reset()
    with torch.no_grad():
        exact = -float(exact_elbo(problem.model, problem.guide, *problem.args))
    losses = _reported_losses(problem, _elbo(label))
    z = (losses.mean() - exact) / (losses.std() / DRAWS**0.5)
    assert abs(float(z)) <= Z_LIMIT, (label, float(losses.mean()), exact, float(z))


def test_relaxed_objective_is_reported_beside_it_and_differs():
    """The relaxed objective is kept, named as such; on this model it is a different number
    (the z-test of the relaxed value against the minus-ELBO fails: what was reported before)."""
    problem = PROBLEMS["sbn_two_layer"]()
    elbo = _elbo("gumbel")
    problem.reset()
    with torch.no_grad():
        exact = -float(exact_elbo(problem.model, problem.guide, *problem.args))
    pyro.set_rng_seed(0)
    relaxed = []
    for _ in range(DRAWS):
        elbo.loss_and_grads(problem.model, problem.guide, *problem.args)
        relaxed.append(float(elbo.last_relaxed_loss))
    relaxed = torch.tensor(relaxed, dtype=torch.float64)
    z = (relaxed.mean() - exact) / (relaxed.std() / DRAWS**0.5)
    assert abs(float(z)) > Z_LIMIT, float(z)
    assert _elbo("st").last_relaxed_loss is None


@pytest.mark.parametrize("label", ["gumbel", "st"])
def test_svi_step_loss_and_differentiable_loss_agree(label):
    """``SVI.step``, ``loss`` and ``differentiable_loss`` report the same number at one seed."""
    problem = PROBLEMS["sbn_two_layer"]()
    problem.reset()
    elbo = _elbo(label)
    pyro.set_rng_seed(3)
    loss = elbo.loss(problem.model, problem.guide, *problem.args)
    pyro.set_rng_seed(3)
    differentiable = elbo.differentiable_loss(problem.model, problem.guide, *problem.args)
    pyro.set_rng_seed(3)
    stepped = SVI(problem.model, problem.guide, Adam({"lr": 0.01}), elbo).step(*problem.args)
    assert stepped == pytest.approx(loss, rel=1e-5)
    assert float(differentiable.detach()) == pytest.approx(loss, rel=1e-5)
