"""Black-box costs: rewards computed outside torch keep their learning signal.

A cost computed from sampled values in numpy (``b.detach().numpy()``, an environment's
``step``) carries no provenance; it is scored by the sequential rule (it depends on the
sites read before it, in the plate slices it shares with them), so every unbiased estimator
still matches the exact ELBO gradient (enumeration), and relaxation estimators refuse it.

Each problem runs inside an outer plate of ``REPLICAS`` independent copies (dim -3, as in
``test_unbiased_stein.py``): one draw is the mean of ``REPLICAS`` genuine K-sample
estimates, and ``NUM_DRAWS`` draws give a z-score per parameter component (max |z| <=
4.5). ``test_the_harness_sees_a_lost_reward`` shows that losing the reward (what happened
before the sequential rule) is detected.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from infer.problems import Problem, max_abs_z, replicated
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_discrete.infer import DiscreteELBO, SiteError
from pyro_discrete.infer.dependencies import BlackBoxCostWarning, trace_dependencies
from pyro_discrete.testing import exact_gradients, exact_iwae_bound

NUM_DRAWS = 40
REPLICAS = 50
Z_LIMIT = 4.5

#: every unbiased estimator that takes a black-box cost: (particles K, options)
UNBIASED = {
    "reinforce": (1, {}),
    "nvil": (1, {"normalize_variance": False}),
    "muprop": (1, {}),
    "rloo": (2, {}),
    "arm": (1, {}),
    "disarm": (1, {}),
    "double_cv": (2, {"alpha": 1.0}),
    "rodeo": (2, {"alpha": 1.0, "beta": 1.0, "hidden": (16,)}),
    "unordered_set": (2, {}),
}
RELAXATIONS = ["gumbel", "st", "gumbel_rao", "reinmax", "rebar", "relax"]


# -- the rewards, in numpy (a black box) and in torch -------------------------------------


def _bits_reward_numpy(b, target):
    bn = b.detach().numpy()
    r = -((bn - target.numpy()) ** 2).sum(-1) + 1.5 * bn[..., 0] * bn[..., 2]
    return torch.as_tensor(r)


def _bits_reward_torch(b, target):
    return -((b - target) ** 2).sum(-1) + 1.5 * b[..., 0] * b[..., 2]


def _bits_reward_no_grad(b, target):
    with torch.no_grad():
        return _bits_reward_torch(b, target)


REWARDS = {"numpy": _bits_reward_numpy, "torch": _bits_reward_torch}


def bits_in_one_plate(kind: str = "numpy") -> Problem:
    """The issue's case: 2 x 3 Bernoulli bits, reward ``-(b - 0.499)^2 + 1.5 b0 b2`` per
    datum, added with ``pyro.factor`` inside the data plate (64 configurations)."""
    reward = {**REWARDS, "no_grad": _bits_reward_no_grad}[kind]
    g = torch.Generator().manual_seed(19)
    target = torch.full((2, 3), 0.499)
    init = dict(p=torch.randn(3, generator=g), q=torch.randn(2, 3, generator=g))

    def model(target, index):
        with pyro.plate("data", target.shape[0], dim=-1):
            prior = dist.Bernoulli(logits=pyro.param("p").expand(target.shape)).to_event(1)
            b = pyro.sample("b", prior)
            pyro.factor("reward", reward(b, target))

    def guide(target, index):
        with pyro.plate("data", target.shape[0], dim=-1):
            logits = pyro.param("q")[index]
            pyro.sample("b", dist.Bernoulli(logits=logits).to_event(1))

    args = (target, torch.arange(2))
    return Problem(f"bits_{kind}", model, guide, args, init, guide_params=("q",))


def bits_in_two_plates(kind: str = "numpy") -> Problem:
    """A bit per row (outer plate) and one per cell of a 2 x 2 grid (inner plate); a numpy
    reward per cell and one per row computed from the row's cells (64 configurations)."""
    g = torch.Generator().manual_seed(20)
    y = torch.randn(2, 2, generator=g)
    init = dict(pr=torch.randn(()), pc=torch.randn(()), qr=torch.randn(2, 1), qc=torch.randn(2))
    init = {k: torch.randn(v.shape, generator=g) for k, v in init.items()}
    lib = np if kind == "numpy" else torch

    def rewards(r, c, y):
        if kind == "numpy":
            r, c, y = r.detach().numpy(), c.detach().numpy(), y.numpy()
        cell = -((c + 0.5 * r - y) ** 2) + 0.7 * c * r
        row = 1.3 * lib.abs(c[..., :1] + c[..., 1:] - 1.0) - 0.4 * r
        return torch.as_tensor(cell), torch.as_tensor(row)

    def model(y):
        with pyro.plate("rows", 2, dim=-2):
            r = pyro.sample("row", dist.Bernoulli(logits=pyro.param("pr")))
            with pyro.plate("cols", 2, dim=-1):
                c = pyro.sample("cell", dist.Bernoulli(logits=pyro.param("pc") + r))
                cell, row = rewards(r, c, y)
                pyro.factor("cell_reward", cell)
            pyro.factor("row_reward", row)

    def guide(y):
        with pyro.plate("rows", 2, dim=-2):
            r = pyro.sample("row", dist.Bernoulli(logits=pyro.param("qr")))
            with pyro.plate("cols", 2, dim=-1):
                pyro.sample("cell", dist.Bernoulli(logits=pyro.param("qc") * y - r))

    return Problem(f"plates_{kind}", model, guide, (y,), init, guide_params=("qr", "qc"))


class _Environment:
    """A numpy environment: a position moved by each action, rewarded for approaching a
    goal and for repeating the last action (its state is hidden from provenance)."""

    def __init__(self):
        self.position = None
        self.last = None

    def step(self, action: np.ndarray) -> np.ndarray:
        if self.position is None:
            self.position = np.zeros_like(action)
            self.last = np.zeros_like(action)
        self.position = self.position + 2 * action - 1
        reward = -0.5 * (self.position - 1.0) ** 2 + 0.8 * action * self.last
        self.last = action
        return reward


class _TorchEnvironment(_Environment):
    def step(self, action):
        if self.position is None:
            self.position = torch.zeros_like(action)
            self.last = torch.zeros_like(action)
        self.position = self.position + 2 * action - 1
        reward = -0.5 * (self.position - 1.0) ** 2 + 0.8 * action * self.last
        self.last = action
        return reward


STEPS = 3


def policy_sequence(kind: str = "numpy") -> Problem:
    """Two episodes of three Bernoulli actions drawn in turn (each given the previous one),
    each action followed by a reward from the environment (64 configurations)."""
    g = torch.Generator().manual_seed(21)
    init = dict(p=torch.randn(STEPS, generator=g), q=torch.randn(2, STEPS, generator=g))
    init["w"] = torch.randn(STEPS, generator=g)
    episodes = torch.arange(2.0)

    def model(episodes):
        env = _Environment() if kind == "numpy" else _TorchEnvironment()
        with pyro.plate("episodes", len(episodes), dim=-1):
            for t in range(STEPS):
                prior = dist.Bernoulli(logits=pyro.param("p")[t].expand(len(episodes)))
                action = pyro.sample(f"a{t}", prior)
                if kind == "numpy":
                    reward = torch.as_tensor(env.step(action.detach().numpy()))
                else:
                    reward = env.step(action)
                pyro.factor(f"r{t}", reward)

    def guide(episodes):
        previous = torch.zeros(len(episodes))
        with pyro.plate("episodes", len(episodes), dim=-1):
            for t in range(STEPS):
                logits = pyro.param("q")[: len(episodes), t]
                logits = logits + pyro.param("w")[t] * (2 * previous - 1)
                previous = pyro.sample(f"a{t}", dist.Bernoulli(logits=logits))

    return Problem(f"policy_{kind}", model, guide, (episodes,), init, guide_params=("q", "w"))


PROBLEMS = {f.__name__: f for f in (bits_in_one_plate, bits_in_two_plates, policy_sequence)}


# -- the harness ----------------------------------------------------------------------------


def elbo_for(estimator: str, k: int = 1, **options) -> DiscreteELBO:
    return DiscreteELBO(
        estimator, num_particles=k, vectorize_particles=k > 1, max_plate_nesting=3, **options
    )


def draws(problem: Problem, elbo, num_draws: int = NUM_DRAWS, seed: int = 0) -> dict:
    """Mean-of-replicas gradient estimates (of the ELBO, to be maximised) per parameter."""
    problem.reset()
    pyro.set_rng_seed(seed)
    copies = replicated(problem, REPLICAS)
    params = problem.params()
    out = {name: [] for name in params}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BlackBoxCostWarning)
        for _ in range(num_draws):
            elbo.loss_and_grads(copies.model, copies.guide, *copies.args)
            for name, p in params.items():
                out[name].append(-p.grad / REPLICAS)
            for _, value in pyro.get_param_store().named_parameters():
                value.grad = None
    return {name: torch.stack(v) for name, v in out.items()}


def check(problem: Problem, estimator: str) -> float:
    k, options = UNBIASED[estimator]
    exact = problem.exact()
    z = max_abs_z(draws(problem, elbo_for(estimator, k, **options)), exact)
    print(f"{problem.name:14s} {estimator:14s} max|z| = {z:.2f}")
    return z


# -- every unbiased estimator, numpy rewards and the same rewards in torch ------------------


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("estimator", list(UNBIASED))
def test_unbiased_with_black_box_rewards(estimator, problem, kind):
    assert check(PROBLEMS[problem](kind), estimator) < Z_LIMIT


def test_vimco_with_a_numpy_reward_matches_the_exact_bound():
    """VIMCO's per-datum K-sample bound uses every cost term: a numpy reward is in it."""
    problem = bits_in_one_plate("numpy")
    problem.reset()
    target, index = problem.args
    bound = sum(
        exact_iwae_bound(problem.model, problem.guide, 2, target[i : i + 1], index[i : i + 1])
        for i in range(2)
    )
    exact = exact_gradients(bound, problem.params())
    z = max_abs_z(
        draws(problem, DiscreteELBO("vimco", num_particles=2, max_plate_nesting=3)), exact
    )
    print(f"vimco max|z| = {z:.2f}")
    assert z < Z_LIMIT


def test_the_harness_sees_a_lost_reward(monkeypatch):
    """Scoring the numpy reward against no site (the behaviour before the sequential rule)
    is detected: the tests above would fail if the rule were missing."""
    import pyro_discrete.infer.evaluation as evaluation_module

    def without_the_rule(*args, **kwargs):
        found = trace_dependencies(*args, **kwargs)
        deps = {key: sites - found.sequential[key] for key, sites in found.deps.items()}
        return dataclasses.replace(found, deps=deps)

    monkeypatch.setattr(evaluation_module, "trace_dependencies", without_the_rule)
    for problem in (bits_in_one_plate("numpy"), policy_sequence("numpy")):
        z = max_abs_z(draws(problem, elbo_for("reinforce")), problem.exact())
        print(f"{problem.name} without the sequential rule: max|z| = {z:.1f}")
        assert z > Z_LIMIT


# -- a non-reparameterised continuous site ------------------------------------------------


def _normal_problem(kind: str):
    """``q = Normal(mu, exp(log_sigma))`` marked ``has_rsample_(False)`` in a plate of two,
    prior ``Normal(0, 1)``, reward ``-(z - 1.3)^2``: the ELBO has a closed form."""
    g = torch.Generator().manual_seed(22)
    init = dict(mu=torch.randn(2, generator=g), log_sigma=0.3 * torch.randn(2, generator=g))

    def model():
        with pyro.plate("data", 2, dim=-1):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0))
            if kind == "numpy":
                reward = torch.as_tensor(-((z.detach().numpy() - 1.3) ** 2))
            else:
                reward = -((z - 1.3) ** 2)
            pyro.factor("reward", reward)

    def guide():
        with pyro.plate("data", 2, dim=-1):
            q = dist.Normal(pyro.param("mu"), pyro.param("log_sigma").exp())
            pyro.sample("z", q.has_rsample_(False))

    def exact():
        mu, log_sigma = pyro.param("mu"), pyro.param("log_sigma")
        var = (2 * log_sigma).exp()
        prior = -0.5 * math.log(2 * math.pi) - 0.5 * (mu**2 + var)
        reward = -((mu - 1.3) ** 2 + var)
        entropy = 0.5 * math.log(2 * math.pi * math.e) + log_sigma
        return (prior + reward + entropy).sum()

    return Problem(f"normal_{kind}", model, guide, (), init), exact


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("estimator", ["reinforce", "nvil", "rloo"])
def test_non_reparameterised_normal_with_a_numpy_reward(estimator, kind):
    problem, exact_elbo = _normal_problem(kind)
    problem.reset()
    exact = exact_gradients(exact_elbo(), problem.params())
    k, options = UNBIASED[estimator]
    z = max_abs_z(draws(problem, elbo_for(estimator, k, **options)), exact)
    print(f"normal {kind} {estimator} max|z| = {z:.2f}")
    assert z < Z_LIMIT


# -- the dependency map and the warning ---------------------------------------------------


def _evaluation(problem: Problem, elbo: DiscreteELBO):
    problem.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BlackBoxCostWarning)
        return elbo._evaluate(problem.model, problem.guide, problem.args, {})


def test_a_reward_depends_on_the_actions_before_it_only():
    """The sequential rule: reward t is scored against actions 0..t, not later ones."""
    ev = _evaluation(policy_sequence("numpy"), elbo_for("reinforce"))
    for t in range(STEPS):
        assert ev.deps[("model", f"r{t}")] == {f"a{s}" for s in range(t + 1)}
    assert ev.black_box_costs(ev.sites["a2"]) == ["model site 'r2'"]
    # the later actions' prior terms are computed after the read too
    later = [f"model site '{name}'" for name in ("a1", "a2", "r0", "r1", "r2")]
    assert ev.black_box_costs(ev.sites["a0"]) == later


def test_costs_traced_through_torch_keep_the_precise_map():
    ev = _evaluation(bits_in_two_plates("torch"), elbo_for("reinforce"))
    assert ev.deps[("model", "cell_reward")] == {"row", "cell"}
    assert ev.black_box_costs(ev.sites["cell"]) == []
    # a reward of the action alone depends on it alone when written in torch
    ev = _evaluation(policy_sequence("torch"), elbo_for("reinforce"))
    assert ev.deps[("model", "r0")] == {"a0"}


def test_the_warning_names_each_black_box_cost_once():
    problem = policy_sequence("numpy")
    problem.reset()
    elbo = elbo_for("reinforce")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in (2, 2, 1):  # a new structure (batch of 1) is not warned about again
            elbo.loss_and_grads(problem.model, problem.guide, torch.arange(float(batch)))
    named = [str(w.message) for w in caught if w.category is BlackBoxCostWarning]
    assert len(named) == 1  # one warning, not one per site, nor again for a new structure
    cost_sites = {part.split("'")[1] for part in named[0].split("model site ")[1:]}
    # every reward, and the priors of the later actions (computed after a read, too)
    assert cost_sites == {f"r{t}" for t in range(STEPS)} | {"a1", "a2"}
    assert "less Rao-Blackwellised" in named[0] and "'a0'" in named[0]


def test_a_torch_reward_is_not_warned_about():
    problem = bits_in_one_plate("no_grad")  # no_grad keeps provenance: a precise map
    problem.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error", BlackBoxCostWarning)
        elbo_for("reinforce").loss_and_grads(problem.model, problem.guide, *problem.args)


@pytest.mark.parametrize("write", ["setitem", "copy_", "tolist", "item"])
def test_other_untracked_paths_are_black_boxes(write):
    """An in-place write into a buffer, ``.tolist()`` and ``.item()`` also lose provenance."""

    def model():
        with pyro.plate("data", 2, dim=-1):
            b = pyro.sample("b", dist.Bernoulli(0.5 * torch.ones(2)))
            if write == "setitem":
                buffer = torch.zeros(2)
                buffer[:] = b
            elif write == "copy_":
                buffer = torch.zeros(2).copy_(b)
            elif write == "tolist":
                buffer = torch.tensor(b.tolist())
            else:
                buffer = torch.stack([torch.tensor(v.item()) for v in b.unbind(-1)])
            pyro.factor("reward", buffer * 2.0)

    def guide():
        with pyro.plate("data", 2, dim=-1):
            pyro.sample("b", dist.Bernoulli(logits=pyro.param("q", torch.zeros(2))))

    pyro.clear_param_store()
    with pytest.warns(BlackBoxCostWarning, match="model site 'reward'.*'b'"):
        ev = DiscreteELBO()._evaluate(model, guide, (), {})
    assert ev.deps[("model", "reward")] == {"b"}


# -- relaxation estimators refuse a black box ---------------------------------------------


def _snapshot() -> dict:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


@pytest.mark.parametrize("kind", ["numpy", "no_grad"])
@pytest.mark.parametrize("estimator", RELAXATIONS)
def test_relaxations_refuse_a_black_box_cost(estimator, kind):
    problem = bits_in_one_plate(kind)
    problem.reset()
    before = _snapshot()
    svi = SVI(problem.model, problem.guide, Adam({"lr": 0.1}), elbo_for(estimator))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BlackBoxCostWarning)
        for _ in range(2):  # refused again when retried
            with pytest.raises(SiteError) as info:
                svi.step(*problem.args)
    message = str(info.value)
    assert "model site 'reward'" in message and "guide site 'b'" in message
    for alternative in ("'rloo'", "black_box=True", "'lax'"):
        assert alternative in message
    after = _snapshot()
    assert after.keys() == before.keys()  # no control variate, no statistic was created
    for name, value in before.items():
        assert torch.equal(after[name], value), name


def test_a_partly_untracked_cost_is_refused():
    """A cost with a gradient path to the relaxed value and a numpy part is refused too."""

    def model():
        b = pyro.sample("b", dist.Bernoulli(0.5 * torch.ones(3)).to_event(1))
        pyro.factor("reward", b.sum() + torch.as_tensor(b.detach().numpy().prod()))

    def guide():
        pyro.sample("b", dist.Bernoulli(logits=pyro.param("q", torch.zeros(3))).to_event(1))

    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BlackBoxCostWarning)
        with pytest.raises(SiteError, match="model site 'reward' is a black-box cost"):
            DiscreteELBO("gumbel").loss_and_grads(model, guide)


def test_relaxations_still_take_a_torch_reward():
    problem = bits_in_one_plate("torch")
    for estimator in RELAXATIONS:
        problem.reset()
        elbo_for(estimator).loss_and_grads(problem.model, problem.guide, *problem.args)


def test_one_warning_names_every_new_black_box_cost_of_a_step():
    """A policy with a reward per time step is warned once, naming the first sites in trace
    order and the count, not once per reward site (and not again on later steps)."""
    steps = 12

    def model():
        with pyro.plate("episodes", 3, dim=-1):
            for t in range(steps):
                action = pyro.sample(f"a{t}", dist.Bernoulli(0.5))
                pyro.factor(f"r{t}", torch.as_tensor(np.asarray(action) * 2.0))

    def guide():
        q = pyro.param("q", torch.zeros(steps))
        with pyro.plate("episodes", 3, dim=-1):
            for t in range(steps):
                pyro.sample(f"a{t}", dist.Bernoulli(logits=q[t]))

    pyro.clear_param_store()
    elbo = DiscreteELBO(estimator="rloo", num_particles=2, max_plate_nesting=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            elbo.loss_and_grads(model, guide)
    said = [w for w in caught if issubclass(w.category, BlackBoxCostWarning)]
    assert len(said) == 1
    message = str(said[0].message)
    assert "model site 'a1', model site 'r1'" in message
    assert "in all)" in message and "'a0'" in message
