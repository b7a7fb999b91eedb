"""``estimator="lax"`` on continuous guide sites whose cost is a black box.

Each model draws ``b`` per datum (a plate of 3) from a guide site that is not
reparameterised (``has_rsample_(False)`` or Pyro's ``fakes.Nonreparameterized*``) and adds
a cost that has no gradient path to ``b``: computed from ``b.detach()``, under
``torch.no_grad()``, or in numpy. Its expectation, the prior's and the guide's entropy have
closed forms, so the exact ELBO gradient is known; LAX's mean gradient must match it
(max |z| <= 4.5) with the control variate at its initial value and after it was trained.
"""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from infer.problems import max_abs_z
from pyro.distributions import constraints
from pyro.distributions.testing import fakes
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_discrete.infer import DiscreteELBO, SiteError
from pyro_discrete.infer.dependencies import MODEL
from pyro_discrete.infer.sites import reparameterized_draw

Z_LIMIT = 4.5
NUM_DRAWS = 30
PARTICLES = 100
DATA = 3


def _cost(kind: str, b: torch.Tensor, target: float) -> torch.Tensor:
    """``-(b - target)^2`` with no gradient path to ``b``."""
    if kind == "detached":
        return -((b.detach() - target) ** 2)
    if kind == "no_grad":
        with torch.no_grad():
            return -((b - target) ** 2)
    if kind == "numpy":
        return torch.as_tensor(-((b.detach().numpy() - target) ** 2), dtype=b.dtype)
    raise ValueError(kind)


def _positive(name: str, value) -> torch.Tensor:
    return pyro.param(name, lambda: torch.as_tensor(value), constraint=constraints.positive)


class ContinuousCase:
    """A non-reparameterised continuous guide site, a prior and a black-box cost with a
    closed-form expected ELBO."""

    target = 1.3

    def __init__(self, name: str, cost: str):
        self.name, self.cost = name, cost

    # q, its closed-form first two moments, the prior and its expected log-density
    def q(self):
        if self.name == "normal":
            loc = pyro.param("loc", lambda: torch.tensor([0.2, -0.5, 1.0]))
            return dist.Normal(loc, _positive("scale", 0.7)).has_rsample_(False)
        if self.name == "normal_fake":
            loc = pyro.param("loc", lambda: torch.tensor([0.2, -0.5, 1.0]))
            return fakes.NonreparameterizedNormal(loc, _positive("scale", 0.7))
        if self.name == "lognormal":
            loc = pyro.param("loc", lambda: torch.tensor([0.1, -0.3, 0.4]))
            return dist.LogNormal(loc, _positive("scale", 0.4)).has_rsample_(False)
        if self.name == "beta":
            c1 = _positive("c1", [0.8, 2.0, 3.0])
            return fakes.NonreparameterizedBeta(c1, _positive("c0", 1.5))
        if self.name == "gamma":
            k = _positive("k", [0.7, 2.0, 4.0])
            return dist.Gamma(k, _positive("rate", 1.5)).has_rsample_(False)
        raise ValueError(self.name)

    def moments(self, q) -> tuple[torch.Tensor, torch.Tensor]:
        """``E[b]`` and ``E[b^2]`` (differentiable in the parameters)."""
        if self.name == "lognormal":
            loc, scale = q.loc, q.scale
            return (loc + scale**2 / 2).exp(), (2 * loc + 2 * scale**2).exp()
        mean, var = q.mean, q.variance
        return mean, var + mean**2

    def prior(self):
        if self.name.startswith("normal"):
            return dist.Normal(0.0, 3.0)
        if self.name == "beta":
            return dist.Uniform(0.0, 1.0)
        return dist.Exponential(1.0)

    def expected_log_prior(self, m1, m2):
        if self.name.startswith("normal"):
            return -m2 / 18 - math.log(3 * math.sqrt(2 * math.pi))
        if self.name == "beta":
            return torch.zeros_like(m1)
        return -m1

    @property
    def t(self) -> float:
        return {"beta": 0.3, "gamma": 1.5, "lognormal": 2.0}.get(self.name, self.target)

    def model(self):
        with pyro.plate("data", DATA):
            b = pyro.sample("b", self.prior())
            pyro.factor("cost", _cost(self.cost, b, self.t))

    def guide(self):
        q = self.q()
        with pyro.plate("data", DATA):
            pyro.sample("b", q)

    def exact(self) -> dict[str, torch.Tensor]:
        """The exact ELBO gradient in each unconstrained parameter."""
        pyro.clear_param_store()
        q = self.q()
        m1, m2 = self.moments(q)
        expected_cost = -(m2 - 2 * self.t * m1 + self.t**2)
        elbo = (expected_cost + self.expected_log_prior(m1, m2) + q.entropy()).sum()
        params = self.params()
        grads = torch.autograd.grad(elbo, list(params.values()))
        return dict(zip(params, grads, strict=True))

    def params(self) -> dict[str, torch.Tensor]:
        store = pyro.get_param_store()
        return {
            k: store[k].unconstrained() for k in store.keys() if not k.startswith("pyro_discrete/")
        }


def _elbo(**options) -> DiscreteELBO:
    return DiscreteELBO(
        "lax",
        num_particles=PARTICLES,
        vectorize_particles=True,
        max_plate_nesting=1,
        **options,
    )


def _draws(case: ContinuousCase, elbo: DiscreteELBO, num_draws: int = NUM_DRAWS) -> dict:
    """``num_draws`` estimates of the ELBO gradient (each over ``PARTICLES``), without
    moving the model or guide."""
    params = case.params()
    draws = {k: [] for k in params}
    for _ in range(num_draws):
        for p in params.values():
            p.grad = None
        elbo.loss_and_grads(case.model, case.guide)
        for k, p in params.items():
            draws[k].append(-p.grad.clone())
    return {k: torch.stack(v) for k, v in draws.items()}


def _train_control_variate(case: ContinuousCase, elbo: DiscreteELBO, steps: int) -> None:
    """Adam steps on the control variate alone (the model and guide stay where they are)."""
    elbo.loss_and_grads(case.model, case.guide)
    store = pyro.get_param_store()
    network = [v for k, v in store.named_parameters() if k.startswith("pyro_discrete/")]
    optimizer = torch.optim.Adam(network, lr=0.01)
    for _ in range(steps):
        for _, v in store.named_parameters():
            v.grad = None
        elbo.loss_and_grads(case.model, case.guide)
        optimizer.step()
    for _, v in store.named_parameters():
        v.grad = None


def numpy_costs_are_attributed() -> bool:
    """Whether the learning signal of a site includes a cost computed from its value in
    numpy (helper "blackbox"'s black-box cost detection, issue 19 item 1)."""
    case = ContinuousCase("normal", "numpy")
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev = _elbo()._evaluate(case.model, case.guide, (), {})
    return "b" in ev.deps.get((MODEL, "cost"), ())


NAMES = ["normal", "normal_fake", "lognormal", "beta", "gamma"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cost", ["detached", "no_grad"])
def test_lax_is_unbiased_on_a_black_box_cost(name, cost):
    pyro.set_rng_seed(0)
    case = ContinuousCase(name, cost)
    exact = case.exact()
    draws = _draws(case, _elbo())
    z = max_abs_z(draws, exact)
    print(f"{name} {cost} max|z| = {z:.2f}")
    assert z < Z_LIMIT


@pytest.mark.parametrize("name", NAMES)
def test_lax_is_unbiased_after_training_its_control_variate(name):
    pyro.set_rng_seed(1)
    case = ContinuousCase(name, "detached")
    exact = case.exact()
    elbo = _elbo(hidden=(16, 16))
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    _train_control_variate(case, DiscreteELBO("lax", max_plate_nesting=1, hidden=(16, 16)), 100)
    after = pyro.get_param_store()
    for k, v in before.items():  # the model and guide did not move
        torch.testing.assert_close(after[k].detach(), v)
    network = {k: v for k, v in after.items() if k.startswith("pyro_discrete/lax/b/")}
    assert network  # trained and registered under the site's name
    draws = _draws(case, elbo)
    z = max_abs_z(draws, exact)
    print(f"{name} trained max|z| = {z:.2f}")
    assert z < Z_LIMIT


def test_training_the_control_variate_lowers_the_variance():
    """The variance objective works: the gradient variance of ``loc`` falls well below
    that of the untrained control variate (measured ratio about 10x; asserted: 3x)."""
    pyro.set_rng_seed(2)
    case = ContinuousCase("normal", "detached")
    case.exact()
    elbo = DiscreteELBO("lax", max_plate_nesting=1, hidden=(16, 16))
    untrained = _draws(case, elbo, 100)["loc"].var(0).mean()
    _train_control_variate(case, elbo, 200)
    trained = _draws(case, elbo, 100)["loc"].var(0).mean()
    print(f"loc gradient variance {untrained:.3f} -> {trained:.3f}")
    assert trained < untrained / 3


@pytest.mark.parametrize("name", ["normal", "gamma"])
def test_lax_with_a_numpy_cost(name):
    if not numpy_costs_are_attributed():
        pytest.skip(
            "needs helper 'blackbox''s black-box cost detection (issue 19 item 1): a cost "
            "computed in numpy is not yet in any site's learning signal"
        )
    pyro.set_rng_seed(3)
    case = ContinuousCase(name, "numpy")
    exact = case.exact()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the less-Rao-Blackwellised notice
        draws = _draws(case, _elbo())
    assert max_abs_z(draws, exact) < Z_LIMIT


def test_lax_honours_pyro_baseline_options():
    """A decaying-average baseline is a constant added to the control variate: still
    unbiased (Pyro's conjugate-chain cases use it, see test_pyro_suites.py)."""
    pyro.set_rng_seed(4)
    case = ContinuousCase("normal", "detached")
    exact = case.exact()

    def guide():
        q = case.q()
        with pyro.plate("data", DATA):
            pyro.sample("b", q, infer={"baseline": {"use_decaying_avg_baseline": True}})

    case.guide = guide
    elbo = _elbo()
    for _ in range(5):  # move the running average away from 0
        elbo.loss_and_grads(case.model, case.guide)
    average = pyro.get_param_store()["pyro_discrete/baseline/b/average"]
    assert average.abs() > 0.1
    assert max_abs_z(_draws(case, elbo), exact) < Z_LIMIT


def test_lax_trains_a_guide_end_to_end():
    """SVI with lax moves a Normal guide to the optimum of a black-box objective:
    E[-(b - 1.3)^2] + H(q) + E[log N(b; 0, 3)] is maximised at loc = 1.3 * 9 / 9.5."""
    pyro.clear_param_store()
    pyro.set_rng_seed(5)
    case = ContinuousCase("normal", "detached")
    elbo = DiscreteELBO("lax", num_particles=8, vectorize_particles=True, hidden=(16,))
    svi = SVI(case.model, case.guide, Adam({"lr": 0.05}), elbo)
    for _ in range(200):
        svi.step()
    loc = pyro.param("loc").detach()
    assert torch.allclose(loc, torch.full((DATA,), 1.3 * 9 / 9.5), atol=0.15), loc


def test_user_surrogate_per_site():
    """``surrogate=`` replaces the default network, per site through ``infer``."""
    pyro.clear_param_store()
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    case = ContinuousCase("normal", "detached")

    def guide():
        q = case.q()
        with pyro.plate("data", DATA):
            pyro.sample(
                "b",
                q,
                infer={"estimator": "lax", "estimator_options": {"surrogate": net}},
            )

    elbo = DiscreteELBO("reinforce", max_plate_nesting=1)
    elbo.loss_and_grads(case.model, guide)
    assert "pyro_discrete/lax/b/surrogate$$$0.weight" in pyro.get_param_store()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0


# -- refusals ---------------------------------------------------------------------------


def _step(model, guide, **options):
    pyro.clear_param_store()
    SVI(model, guide, Adam({"lr": 0.01}), DiscreteELBO("lax", **options)).step()


def test_a_bernoulli_site_is_refused_with_relax_black_box_as_the_fix():
    def model():
        pyro.sample("coin", dist.Bernoulli(0.5))

    def guide():
        pyro.sample("coin", dist.Bernoulli(logits=pyro.param("logit", torch.tensor(0.0))))

    with pytest.raises(SiteError, match=r"site 'coin' has distribution Bernoulli") as info:
        _step(model, guide)
    assert "'relax'" in str(info.value) and "'black_box': True" in str(info.value)


def test_an_index_categorical_site_is_refused_with_one_hot_as_the_fix():
    def model():
        pyro.sample("c", dist.Categorical(logits=torch.zeros(3)))

    def guide():
        pyro.sample("c", dist.Categorical(logits=pyro.param("logits", torch.zeros(3))))

    with pytest.raises(SiteError, match=r"site 'c'.*OneHotCategorical.*black_box"):
        _step(model, guide)


def test_a_site_without_rsample_is_refused_naming_it_and_the_fix():
    def model():
        pyro.sample("n", dist.Poisson(3.0))

    def guide():
        pyro.sample("n", dist.Poisson(pyro.param("rate", torch.tensor(2.0))))

    with pytest.raises(SiteError, match=r"site 'n' has distribution Poisson.*rsample.*reinforce"):
        _step(model, guide)


def test_reparameterized_draw_keeps_the_site_shape_and_wrappers():
    """The copy is drawn at the site's full shape (expand, to_event, mask) and its
    log-density is the site's (masked elements included when ``masked=False``)."""
    loc = torch.zeros(2, requires_grad=True)
    mask = torch.tensor([[True, False], [True, True], [False, True]])
    fn = dist.Normal(loc, 1.0).has_rsample_(False).expand([3, 2]).mask(mask).to_event(1)
    draw = reparameterized_draw(fn, "z", "lax")
    assert draw.sample.shape == (3, 2) and draw.sample.requires_grad
    assert set(draw.trained) == {"loc"}
    torch.testing.assert_close(
        draw.fn.log_prob(draw.sample.detach()), fn.log_prob(draw.sample.detach())
    )
