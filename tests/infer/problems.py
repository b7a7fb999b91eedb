"""Small models whose ELBO can be enumerated exactly, and a z-test harness."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch

from pyro_discrete.testing import exact_elbo, exact_gradients


@dataclass
class Problem:
    name: str
    model: object
    guide: object
    args: tuple
    init: dict
    bernoulli: bool = True
    guide_params: tuple = ()

    def reset(self):
        pyro.clear_param_store()
        for key, value in self.init.items():
            pyro.param(key, value.clone())

    def exact(self) -> dict:
        self.reset()
        return exact_gradients(exact_elbo(self.model, self.guide, *self.args), self.params())

    def params(self) -> dict:
        return {k: pyro.param(k).unconstrained() for k in self.init}


def _param(name):
    return pyro.param(name)


def sbn_two_layer() -> Problem:
    """Two Bernoulli layers in a data plate (2 data, 2 + 2 latent bits: 256 configurations)."""
    n, d1, d2, dx = 2, 2, 2, 3
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((n, dx), 0.5), generator=g)
    shapes = dict(W1=(dx, d1), c1=(d1,), W2=(d1, d2), c2=(d2,), p2=(d2,), V2=(d2, d1), b1=(d1,))
    shapes.update(V1=(d1, dx), b0=(dx,))
    init = {k: torch.randn(s, generator=g) for k, s in shapes.items()}

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            z2 = pyro.sample(
                "z2", dist.Bernoulli(logits=_param("p2").expand(len(x), d2)).to_event(1)
            )
            logits1 = (2 * z2 - 1) @ _param("V2") + _param("b1")
            z1 = pyro.sample("z1", dist.Bernoulli(logits=logits1).to_event(1))
            logits0 = (2 * z1 - 1) @ _param("V1") + _param("b0")
            pyro.sample("x", dist.Bernoulli(logits=logits0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            z1 = pyro.sample(
                "z1", dist.Bernoulli(logits=x @ _param("W1") + _param("c1")).to_event(1)
            )
            logits2 = (2 * z1 - 1) @ _param("W2") + _param("c2")
            pyro.sample("z2", dist.Bernoulli(logits=logits2).to_event(1))

    return Problem("sbn_two_layer", model, guide, (x,), init, guide_params=("W1", "c1", "W2", "c2"))


def categorical_chain() -> Problem:
    """Two one-hot categoricals (3 classes) per datum, the second given the first."""
    n, k = 2, 3
    g = torch.Generator().manual_seed(1)
    y = torch.randn(n, generator=g)
    shapes = dict(q1=(n, k), Q2=(k, k), p1=(k,), P2=(k, k), mu=(k, k))
    init = {name: torch.randn(s, generator=g) for name, s in shapes.items()}

    def model(y):
        with pyro.plate("data", len(y), dim=-1):
            a = pyro.sample("a", dist.OneHotCategorical(logits=_param("p1").expand(len(y), k)))
            b = pyro.sample("b", dist.OneHotCategorical(logits=a @ _param("P2")))
            mean = ((a.unsqueeze(-1) * b.unsqueeze(-2)) * _param("mu")).sum((-1, -2))
            pyro.sample("y", dist.Normal(mean, 1.0), obs=y)

    def guide(y):
        with pyro.plate("data", len(y), dim=-1):
            a = pyro.sample("a", dist.OneHotCategorical(logits=_param("q1")))
            pyro.sample("b", dist.OneHotCategorical(logits=a @ _param("Q2") + y.unsqueeze(-1)))

    return Problem("categorical_chain", model, guide, (y,), init, False, ("q1", "Q2"))


def mixture_of_experts() -> Problem:
    """A gate choosing one of 3 linear experts per datum, inside a data plate."""
    n, k = 3, 3
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, generator=g)
    y = 2 * x + torch.randn(n, generator=g)
    shapes = dict(gate_w=(k,), gate_b=(k,), slope=(k,), bias=(k,), q_w=(k,), q_b=(k,))
    init = {name: torch.randn(s, generator=g) for name, s in shapes.items()}

    def model(x, y):
        with pyro.plate("data", len(x), dim=-1):
            logits = x.unsqueeze(-1) * _param("gate_w") + _param("gate_b")
            choice = pyro.sample("expert", dist.OneHotCategorical(logits=logits))
            prediction = x.unsqueeze(-1) * _param("slope") + _param("bias")
            pyro.sample("y", dist.Normal((choice * prediction).sum(-1), 0.5), obs=y)

    def guide(x, y):
        with pyro.plate("data", len(x), dim=-1):
            logits = (x * y).unsqueeze(-1) * _param("q_w") + _param("q_b")
            pyro.sample("expert", dist.OneHotCategorical(logits=logits))

    return Problem("mixture_of_experts", model, guide, (x, y), init, False, ("q_w", "q_b"))


def global_and_local() -> Problem:
    """A global Bernoulli outside the plate and a local one per datum that depends on it."""
    n = 3
    g = torch.Generator().manual_seed(3)
    y = torch.randn(n, generator=g)
    names = ("pg", "pl", "shift", "scale", "qg", "ql", "qlg")
    init = {name: torch.randn(2 if name == "pl" else (), generator=g) for name in names}

    def model(y):
        glob = pyro.sample("global", dist.Bernoulli(logits=_param("pg")))
        with pyro.plate("data", len(y), dim=-1):
            local_logits = _param("pl")[0] + _param("pl")[1] * glob
            loc = pyro.sample("local", dist.Bernoulli(logits=local_logits))
            mean = _param("shift") * glob + _param("scale") * loc
            pyro.sample("y", dist.Normal(mean, 1.0), obs=y)

    def guide(y):
        glob = pyro.sample("global", dist.Bernoulli(logits=_param("qg")))
        with pyro.plate("data", len(y), dim=-1):
            pyro.sample("local", dist.Bernoulli(logits=_param("ql") * y + _param("qlg") * glob))

    return Problem("global_and_local", model, guide, (y,), init, guide_params=("qg", "ql", "qlg"))


def nested_plates() -> Problem:
    """A Bernoulli per row (outer plate) and one per cell of a rows x columns grid."""
    rows, cols = 2, 2
    g = torch.Generator().manual_seed(5)
    y = torch.randn(rows, cols, generator=g)
    names = dict(pr=(), pc=(), w=(), qr=(rows, 1), qc=(cols,), qrc=())
    init = {name: torch.randn(s, generator=g) for name, s in names.items()}

    def model(y):
        with pyro.plate("rows", rows, dim=-2):
            r = pyro.sample("row", dist.Bernoulli(logits=_param("pr")))
            with pyro.plate("cols", cols, dim=-1):
                c = pyro.sample("cell", dist.Bernoulli(logits=_param("pc") + r))
                pyro.sample("y", dist.Normal(_param("w") * (r + c), 1.0), obs=y)

    def guide(y):
        with pyro.plate("rows", rows, dim=-2):
            r = pyro.sample("row", dist.Bernoulli(logits=_param("qr")))
            with pyro.plate("cols", cols, dim=-1):
                pyro.sample("cell", dist.Bernoulli(logits=_param("qc") * y + _param("qrc") * r))

    return Problem("nested_plates", model, guide, (y,), init, guide_params=("qr", "qc", "qrc"))


PROBLEMS = {
    f.__name__: f
    for f in (sbn_two_layer, categorical_chain, mixture_of_experts, global_and_local, nested_plates)
}


def index_categorical() -> Problem:
    """Index-valued Categorical latents (score-function estimators only)."""
    n, k = 3, 3
    g = torch.Generator().manual_seed(6)
    y = torch.randn(n, generator=g)
    init = dict(
        p=torch.randn(k, generator=g),
        means=torch.randn(k, generator=g),
        q=torch.randn(k, generator=g),
    )

    def model(y):
        with pyro.plate("data", n, dim=-1):
            c = pyro.sample("c", dist.Categorical(logits=_param("p")))
            pyro.sample("y", dist.Normal(_param("means")[c], 1.0), obs=y)

    def guide(y):
        with pyro.plate("data", n, dim=-1):
            pyro.sample("c", dist.Categorical(logits=_param("q") * y.unsqueeze(-1)))

    return Problem("index_categorical", model, guide, (y,), init, False, ("q",))


def estimator_draws(problem: Problem, elbo, num_draws: int, seed: int = 0) -> dict:
    """``num_draws`` gradient estimates (of the ELBO, to be maximised) per parameter."""
    problem.reset()
    pyro.set_rng_seed(seed)
    params = problem.params()
    draws = {k: [] for k in params}
    for _ in range(num_draws):
        for p in params.values():
            p.grad = None
        elbo.loss_and_grads(problem.model, problem.guide, *problem.args)
        for k, p in params.items():
            draws[k].append(torch.zeros_like(p) if p.grad is None else -p.grad.clone())
    return {k: torch.stack(v) for k, v in draws.items()}


def draws_from_state(problem: Problem, elbo, state: dict, num_draws: int, seed: int) -> dict:
    """``num_draws`` gradient estimates per parameter, each taken from the param store's
    ``state`` (trained control variates included), so that no draw sees another's update."""
    params = problem.params()
    pyro.set_rng_seed(seed)
    draws = {k: [] for k in params}
    for _ in range(num_draws):
        pyro.get_param_store().set_state(state)
        elbo.loss_and_grads(problem.model, problem.guide, *problem.args)
        for k in params:
            p = pyro.param(k).unconstrained()
            draws[k].append(-p.grad.clone())
            p.grad = None
    return {k: torch.stack(v) for k, v in draws.items()}


def replicated(problem: Problem, replicas: int) -> Problem:
    """``problem`` inside an outer plate of ``replicas`` independent copies (dim -3, left of
    every plate of the problems): one draw is then the sum of ``replicas`` genuine estimates
    of the same parameters' gradient."""

    def wrap(fn):
        def wrapped(*args):
            with pyro.plate("replicas", replicas, dim=-3):
                return fn(*args)

        return wrapped

    return dataclasses.replace(problem, model=wrap(problem.model), guide=wrap(problem.guide))


def max_abs_z_floored(draws: dict, exact: dict) -> float:
    """:func:`max_abs_z` with the standard error floored at 1e-6 of the exact value (plus
    1e-6), for estimators that are exact on some components (zero spread)."""
    worst = 0.0
    for key, d in draws.items():
        se = d.std(0) / d.shape[0] ** 0.5
        floor = 1e-6 * (exact[key].abs() + 1)
        z = (d.mean(0) - exact[key]).abs() / (se**2 + floor**2).sqrt()
        worst = max(worst, z.max().item())
    return worst


def z_scores(draws: dict, exact: dict) -> dict:
    """Per-component z-scores of the draws' mean against the exact gradient."""
    out = {}
    for k, d in draws.items():
        se = d.std(0) / d.shape[0] ** 0.5
        diff = d.mean(0) - exact[k]
        out[k] = torch.where(se > 1e-10, diff / se.clamp(min=1e-10), diff.abs() * 1e10)
    return out


def max_abs_z(draws: dict, exact: dict) -> float:
    return max(z.abs().max().item() for z in z_scores(draws, exact).values())
