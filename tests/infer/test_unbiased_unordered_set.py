"""The unordered-set estimator matches the exact ELBO gradient (enumeration) in expectation.

``num_particles`` = K is the size of the set, so a draw cannot average hundreds of particles
as in ``test_unbiased.py``; instead each problem is replicated R times in an outer plate
(independent copies sharing the parameters: exact gradient R times the problem's), so one
draw averages R independent sets, and 40 draws give a z-score per component. A component
that the estimator computes exactly (a site whose set is its whole domain) differs from the
exact value by float32 rounding only: a floor of 1e-6 relative on the standard error keeps
that from reading as a bias.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from infer.problems import PROBLEMS, Problem, estimator_draws, max_abs_z_floored, replicated

from pyro_discrete.infer import DiscreteELBO, SiteError, UnorderedSet_ELBO
from pyro_discrete.infer.adapters.unordered_set import UnorderedSet

NUM_DRAWS = 40
REPLICATES = 50
Z_LIMIT = 4.5


def three_layer_chain() -> Problem:
    """A chain of three scalar Bernoullis per datum: with K = 2 the middle layer's particles
    often agree, so the last layer's logits are often equal across particles although it
    lies below the first (not a root)."""
    n = 2
    g = torch.Generator().manual_seed(11)
    y = torch.randn(n, generator=g)
    names = ("p", "pb", "pc", "w", "q", "qb", "qc")
    init = {
        name: torch.randn(2 if name in ("w", "qb", "qc") else (), generator=g) for name in names
    }

    def model(y):
        with pyro.plate("data", n, dim=-1):
            a = pyro.sample("a", dist.Bernoulli(logits=pyro.param("p")))
            b = pyro.sample("b", dist.Bernoulli(logits=pyro.param("pb") * (2 * a - 1)))
            c = pyro.sample("c", dist.Bernoulli(logits=pyro.param("pc") * (2 * b - 1)))
            mean = a + pyro.param("w")[0] * b + pyro.param("w")[1] * c
            pyro.sample("y", dist.Normal(mean, 1.0), obs=y)

    def guide(y):
        with pyro.plate("data", n, dim=-1):
            a = pyro.sample("a", dist.Bernoulli(logits=pyro.param("q") + y))
            b = pyro.sample(
                "b", dist.Bernoulli(logits=pyro.param("qb")[0] + pyro.param("qb")[1] * a)
            )
            pyro.sample("c", dist.Bernoulli(logits=pyro.param("qc")[0] + pyro.param("qc")[1] * b))

    return Problem("three_layer_chain", model, guide, (y,), init, guide_params=("q", "qb", "qc"))


def independent_roots() -> Problem:
    """Two sites that depend on no discrete site, with separate cost terms: a global one-hot
    (5 categories) and two bits per datum (``to_event``: 4 joint values), the second after
    the first in the guide."""
    n, k = 3, 5
    g = torch.Generator().manual_seed(12)
    y = torch.randn(n, generator=g)
    init = dict(pg=torch.randn(k, generator=g), mu=torch.randn(k, generator=g))
    init.update(pl=torch.randn(2, generator=g), qg=torch.randn(k, generator=g))
    init.update(ql=torch.randn(n, 2, generator=g), s=torch.randn(2, generator=g))

    def model(y):
        glob = pyro.sample("global", dist.OneHotCategorical(logits=pyro.param("pg")))
        pyro.sample("g_obs", dist.Normal((glob * pyro.param("mu")).sum(-1), 1.0), obs=y[0])
        with pyro.plate("data", n, dim=-1):
            bits = dist.Bernoulli(logits=pyro.param("pl").expand(n, 2)).to_event(1)
            loc = pyro.sample("local", bits)
            pyro.sample("y", dist.Normal(loc @ pyro.param("s"), 1.0), obs=y)

    def guide(y):
        pyro.sample("global", dist.OneHotCategorical(logits=pyro.param("qg")))
        with pyro.plate("data", n, dim=-1):
            pyro.sample("local", dist.Bernoulli(logits=pyro.param("ql")).to_event(1))

    return Problem("independent_roots", model, guide, (y,), init, guide_params=("qg", "ql"))


def mean_field_pair() -> Problem:
    """Two bits and a 3-way one-hot per datum, independent in the guide, sharing the
    likelihood: one set (the bits, first in the guide), the one-hot weighted by it."""
    n = 2
    g = torch.Generator().manual_seed(13)
    y = torch.randn(n, generator=g)
    init = dict(pz=torch.randn(2, generator=g), pc=torch.randn(3, generator=g))
    init.update(w=torch.randn(2, generator=g), mu=torch.randn(3, generator=g))
    init.update(qz=torch.randn(n, 2, generator=g), qc=torch.randn(n, 3, generator=g))

    def model(y):
        with pyro.plate("data", n, dim=-1):
            z = pyro.sample("z", dist.Bernoulli(logits=pyro.param("pz").expand(n, 2)).to_event(1))
            c = pyro.sample("c", dist.OneHotCategorical(logits=pyro.param("pc").expand(n, 3)))
            mean = z @ pyro.param("w") + c @ pyro.param("mu")
            pyro.sample("y", dist.Normal(mean, 1.0), obs=y)

    def guide(y):
        with pyro.plate("data", n, dim=-1):
            pyro.sample("z", dist.Bernoulli(logits=pyro.param("qz")).to_event(1))
            pyro.sample("c", dist.OneHotCategorical(logits=pyro.param("qc")))

    return Problem("mean_field_pair", model, guide, (y,), init, guide_params=("qz", "qc"))


EXTRA = {f.__name__: f for f in (three_layer_chain, independent_roots, mean_field_pair)}


_EXACT: dict = {}


def _exact(problem) -> dict:
    """The problem's exact gradient, enumerated once per module (256 terms for the SBN)."""
    if problem.name not in _EXACT:
        _EXACT[problem.name] = problem.exact()
    return _EXACT[problem.name]


def _z(problem_name: str, k: int, estimator=None, **options) -> float:
    problem = {**PROBLEMS, **EXTRA}[problem_name]()
    exact = {key: REPLICATES * g for key, g in _exact(problem).items()}
    elbo = DiscreteELBO(
        "unordered_set", num_particles=k, vectorize_particles=True, max_plate_nesting=3, **options
    )
    if estimator is not None:
        elbo.estimator = estimator
    draws = estimator_draws(replicated(problem, REPLICATES), elbo, NUM_DRAWS)
    z = max_abs_z_floored(draws, exact)
    print(f"{problem_name:20s} K={k} {options} max|z| = {z:.2f}")
    return z


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("k", [2, 4])
def test_unbiased(problem, k):
    assert _z(problem, k) < Z_LIMIT


@pytest.mark.parametrize("problem", ["categorical_chain", "global_and_local"])
def test_unbiased_when_particles_outnumber_the_domain(problem):
    """K = 5 over 3 categories / 2 values: particles share the values and their weights."""
    assert _z(problem, 5) < Z_LIMIT


@pytest.mark.parametrize("problem", list(EXTRA))
@pytest.mark.parametrize("k", [2, 3])
def test_unbiased_on_deeper_chains_and_independent_roots(problem, k):
    assert _z(problem, k) < Z_LIMIT


def test_equal_logits_below_another_site_are_not_taken_for_a_root():
    """Unreplicated, the middle layer's two particles often agree on both data: the last
    layer's logits are then equal across particles. It must still be drawn per particle and
    weighted by the first layer's set (no error, no bias)."""
    problem = three_layer_chain()
    exact = _exact(problem)
    elbo = DiscreteELBO("unordered_set", num_particles=2, max_plate_nesting=1)
    coincidences = []
    base_value = elbo.estimator.base_value

    def spy(site):
        value = base_value(site)
        logits = site.logits
        coincidences.append(site.name == "c" and bool((logits[0] == logits[1]).all()))
        return value

    elbo.estimator.base_value = spy
    draws = estimator_draws(problem, elbo, 200)
    assert sum(coincidences) > 20
    assert max_abs_z_floored(draws, exact) < Z_LIMIT


@pytest.mark.parametrize("problem", ["sbn_two_layer", "categorical_chain"])
def test_unbiased_with_integrated_set_probabilities(problem):
    assert _z(problem, 3, method="integrate") < Z_LIMIT


class _UniformWeights(UnorderedSet):
    """Negative control: distinct samples averaged with equal weights (biased)."""

    def base_value(self, site):
        value = super().base_value(site)
        root = self._roots.get(site.name)
        if root is not None and root.log_p is not None:
            root.log_w = torch.full_like(root.log_w, -math.log(root.log_w.shape[-1]))
        return value


@pytest.mark.parametrize("problem", ["sbn_two_layer", "categorical_chain"])
def test_the_z_test_sees_sets_without_their_weights(problem):
    assert _z(problem, 2, estimator=_UniformWeights()) > Z_LIMIT


def test_particles_of_a_root_site_are_distinct():
    problem = PROBLEMS["categorical_chain"]()
    problem.reset()
    elbo = UnorderedSet_ELBO(num_particles=3, max_plate_nesting=1)
    # the first step draws per particle (the structure is not known yet), later ones sets
    elbo.loss_and_grads(problem.model, problem.guide, *problem.args)
    _, guide_trace = elbo._get_trace(problem.model, problem.guide, problem.args, {})
    a = guide_trace.nodes["a"]["value"]  # (particles, data, categories)
    assert a.shape == (3, 2, 3)
    assert (a.sum(0) == 1).all()  # K = 3 distinct one-hot values: every category once
    b = guide_trace.nodes["b"]["value"]  # downstream: one draw per particle
    assert b.shape == (3, 2, 3) and (b.sum(-1) == 1).all()


# ---------------------------------------------------------------------------------------
# where the estimator does not apply
# ---------------------------------------------------------------------------------------


def _step(model, guide, *args, k=2, nesting=1):
    """Two steps with a new ELBO: the first learns the structure, the second draws sets."""
    pyro.clear_param_store()
    elbo = DiscreteELBO("unordered_set", num_particles=k, max_plate_nesting=nesting)
    elbo.loss_and_grads(model, guide, *args)
    return elbo.loss_and_grads(model, guide, *args)


def test_error_for_a_site_outside_the_plates_of_its_group_set():
    def model():
        data = pyro.plate("data", 3)
        with data:
            z = pyro.sample("z", dist.Bernoulli(0.5))
        g = pyro.sample("g", dist.Bernoulli(0.5))
        with data:
            pyro.sample("y", dist.Normal(z + g, 1.0), obs=torch.zeros(3))

    def guide():
        q = pyro.param("q", torch.zeros(4))
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(logits=q[:3]))
        pyro.sample("g", dist.Bernoulli(logits=q[3]))

    with pytest.raises(SiteError, match=r"'g' shares cost terms with site 'z' but lies outside"):
        _step(model, guide)


def test_error_when_the_structure_changes_under_one_elbo():
    def model():
        a = pyro.sample("a", dist.Bernoulli(0.5))
        pyro.sample("b", dist.Bernoulli(0.3 + 0.4 * a))

    def chain():
        q = pyro.param("q", torch.zeros(2))
        a = pyro.sample("a", dist.Bernoulli(logits=q[0]))
        pyro.sample("b", dist.Bernoulli(logits=q[1] + a))

    def reversed_chain():
        q = pyro.param("q", torch.zeros(2))
        b = pyro.sample("b", dist.Bernoulli(logits=q[1]))
        # depends on b (its provenance says so) with logits equal in every particle
        pyro.sample("a", dist.Bernoulli(logits=q[0] + 0 * b))

    elbo = DiscreteELBO("unordered_set", num_particles=2, max_plate_nesting=0)
    elbo.loss_and_grads(model, chain)
    with pytest.raises(SiteError, match=r"site 'a' was drawn without replacement.*\['b'\]"):
        elbo.loss_and_grads(model, reversed_chain)


def test_error_for_another_estimator_sharing_costs_with_a_set():
    def model():
        a = pyro.sample("a", dist.Bernoulli(0.5))
        pyro.sample("b", dist.Bernoulli(0.3 + 0.4 * a))

    def guide():
        q = pyro.param("q", torch.zeros(2))
        a = pyro.sample("a", dist.Bernoulli(logits=q[0]))
        pyro.sample("b", dist.Bernoulli(logits=q[1] + a), infer={"estimator": "rloo"})

    with pytest.raises(SiteError, match=r"site 'b' \(estimator 'rloo'\).*'a'"):
        _step(model, guide)


def test_error_for_a_cost_outside_the_set_plate():
    def model():
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("total", dist.Normal(z.sum(-1), 1.0), obs=torch.tensor(1.0))

    def guide():
        q = pyro.param("q", torch.zeros(3))
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(logits=q))

    with pytest.raises(SiteError, match=r"cost of site 'total' depends on site 'z'.*'data'"):
        _step(model, guide)


def test_a_site_below_a_continuous_site_is_drawn_per_particle():
    """Its distribution differs across particles and no set is involved: RLOO weights."""

    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Bernoulli(logits=x))

    def guide():
        loc = pyro.param("loc", torch.tensor(0.3))
        x = pyro.sample("x", dist.Normal(loc, 1.0))  # reparameterised, one per particle
        pyro.sample("b", dist.Bernoulli(logits=x))

    loss = _step(model, guide, nesting=0)
    assert math.isfinite(loss) and torch.isfinite(pyro.param("loc").unconstrained().grad)


def test_error_for_index_categoricals_and_single_particles():
    def model():
        pyro.sample("c", dist.Categorical(logits=torch.zeros(3)))

    def guide():
        pyro.sample("c", dist.Categorical(logits=pyro.param("q", torch.zeros(3))))

    with pytest.raises(SiteError, match=r"site 'c'.*OneHotCategorical.*'rloo'"):
        _step(model, guide)
    with pytest.raises(ValueError, match="num_particles >= 2"):
        DiscreteELBO("unordered_set", num_particles=1)
    with pytest.raises(ValueError, match="method"):
        DiscreteELBO("unordered_set", num_particles=2, method="simpson")
