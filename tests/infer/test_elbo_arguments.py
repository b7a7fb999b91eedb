"""``DiscreteELBO`` refuses a bad constructor argument at construction, naming it and the
fix (issue 22: ``num_particles=0`` used to fail at the first step with an AttributeError)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_discrete.infer import ESTIMATORS, DiscreteELBO

BAD_ARGUMENTS = [
    # (keyword arguments, exception type, pattern the message must match)
    (dict(estimator="nvil", num_particles=0), ValueError, r"num_particles must be >= 1"),
    (dict(num_particles=-3), ValueError, r"num_particles must be >= 1"),
    (dict(num_particles=2.5), TypeError, r"num_particles must be a whole number"),
    (dict(num_particles=True), TypeError, r"num_particles must be a whole number"),
    (dict(num_particles="4"), TypeError, r"num_particles must be a whole number"),
    (dict(estimator="rloo", num_particles=1), ValueError, r"'rloo' needs num_particles >= 2"),
    (dict(max_plate_nesting=-1), ValueError, r"max_plate_nesting must be a whole number >= 0"),
    (dict(max_plate_nesting=1.5), ValueError, r"max_plate_nesting must be a whole number >= 0"),
    (dict(max_plate_nesting="2"), ValueError, r"max_plate_nesting must be a whole number >= 0"),
    (dict(estimator=3), TypeError, r"estimator must be a name such as 'rloo'"),
    (dict(vectorize_particles="yes"), TypeError, r"vectorize_particles must be True or False"),
    (dict(cache_dependencies=1), TypeError, r"cache_dependencies must be True or False"),
    (dict(check_finite=None), TypeError, r"check_finite must be True or False"),
    (
        dict(estimator_options=[("temperature", 0.5)]),
        TypeError,
        r"estimator_options must be a dict",
    ),
    (
        dict(estimator="rodeo", num_particles=3, vectorize_particles=False),
        ValueError,
        r"'rodeo' evaluates its particles as one vectorised batch.*vectorize_particles=True",
    ),
    # estimator options of the wrong type or out of range
    (
        dict(estimator="rebar", temperature="hot"),
        TypeError,
        r"'rebar'.*temperature must be a number",
    ),
    (dict(estimator="rebar", temperature=float("nan")), ValueError, r"temperature must be finite"),
    (dict(estimator="relax", eta=[1.0]), TypeError, r"'relax'.*eta must be a number"),
    (dict(estimator="nvil", hidden=5), TypeError, r"'nvil'.*hidden must be a tuple of positive"),
    (dict(estimator="nvil", hidden=(8, -1)), ValueError, r"hidden must be a tuple of positive"),
    (
        dict(estimator="nvil", normalize_variance="no"),
        TypeError,
        r"normalize_variance must be True",
    ),
    (dict(estimator="nvil", alpha=1.5), ValueError, r"'nvil': alpha is the decay rate.*\[0, 1\]"),
    (dict(estimator="muprop", baseline_beta=-0.1), ValueError, r"baseline_beta .*\[0, 1\]"),
    (dict(estimator="gumbel", anneal_rate=-1.0), ValueError, r"'gumbel': anneal_rate must be >= 0"),
    (dict(estimator="gumbel_rao", num_samples=2.5), TypeError, r"num_samples must be a whole"),
    (
        dict(estimator="rebar", learn_control_variates="false"),
        TypeError,
        r"learn_control_variates must be True or False",
    ),
    (
        dict(estimator="double_cv", num_particles=2, estimator_options={"alpha": None}),
        TypeError,
        r"'double_cv'.*alpha must be a number",
    ),
]


@pytest.mark.parametrize(
    "kwargs,error,pattern", BAD_ARGUMENTS, ids=[str(k) for k, _, _ in BAD_ARGUMENTS]
)
def test_bad_argument_is_refused_at_construction(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        DiscreteELBO(**kwargs)


def test_a_per_site_option_of_the_wrong_type_names_the_site():
    def model():
        pyro.sample("z", dist.Bernoulli(0.5))

    def guide():
        p = pyro.param("p", torch.tensor(0.0))
        pyro.sample(
            "z",
            dist.Bernoulli(logits=p),
            infer={"estimator": "rebar", "estimator_options": {"temperature": "cold"}},
        )

    with pytest.raises(TypeError, match=r"'rebar' on site 'z': temperature must be a number"):
        DiscreteELBO().loss_and_grads(model, guide)


# lax takes continuous sites only: it refuses this Bernoulli model by design (test_lax.py)
@pytest.mark.parametrize("name", sorted(set(ESTIMATORS) - {"lax"}))
def test_good_arguments_still_train(name):
    """The checks refuse nothing valid: every estimator, with integer-valued options and a
    given ``max_plate_nesting``, takes a step."""
    multi = ESTIMATORS[name]().estimator.multi_sample

    def model():
        with pyro.plate("data", 2):
            z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(2)))
            pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor([0.0, 1.0]))

    def guide():
        logits = pyro.param("logits", torch.zeros(2))
        with pyro.plate("data", 2):
            pyro.sample("z", dist.Bernoulli(logits=logits))

    elbo = DiscreteELBO(name, num_particles=3 if multi else 1, max_plate_nesting=1)
    loss = SVI(model, guide, Adam({"lr": 0.01}), elbo).step()
    assert torch.isfinite(torch.tensor(loss))
