"""REBAR / RELAX relaxed passes: stacked into one vectorised evaluation, or looped (2L).

``python -m benchmarks.relaxed_passes [--rounds 5] [--steps 20] [--trace-models]``

Two models: the linear two-layer sigmoid belief net 784-200-200 (batch 24, synthetic binary
pixels) and a 20-step HMM (a discrete hidden chain of one-hot states, ``pyro.markov``,
16 sequences). For each, and for ``vectorize_passes`` True and False measured interleaved
in one process (rounds alternate), the median eager ``pyro.infer.SVI`` step, the
``CompiledSVI`` (``backend="trace"``) recording step and the median replayed step.

``--trace-models`` also times the recording step of ``CompiledSVI`` on every model of
:mod:`pyro_discrete.models` with ``rebar`` and ``nvil``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_discrete.infer import CompiledSVI, DiscreteELBO


class HMM(nn.Module):
    """A hidden chain of ``states`` one-hot states observed through Gaussian emissions."""

    def __init__(self, steps: int = 20, states: int = 4):
        super().__init__()
        self.steps = steps
        self.init_logits = nn.Parameter(torch.zeros(states))
        self.transition = nn.Parameter(torch.randn(states, states) * 0.5)
        self.means = nn.Parameter(torch.linspace(-2, 2, states))
        self.q_prev = nn.Parameter(torch.zeros(states, states))
        self.q_obs = nn.Parameter(torch.linspace(-1, 1, states))
        self.q_bias = nn.Parameter(torch.zeros(states))

    def model(self, x: torch.Tensor) -> None:
        pyro.module("hmm", self)
        with pyro.plate("sequences", x.shape[0]):
            z = None
            for t in pyro.markov(range(self.steps)):
                logits = self.init_logits if z is None else z @ self.transition
                z = pyro.sample(f"z_{t}", dist.OneHotCategorical(logits=logits))
                pyro.sample(f"x_{t}", dist.Normal(z @ self.means, 1.0), obs=x[:, t])

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("hmm", self)
        with pyro.plate("sequences", x.shape[0]):
            z = None
            for t in pyro.markov(range(self.steps)):
                logits = x[:, t, None] * self.q_obs + self.q_bias
                if z is not None:
                    logits = logits + z @ self.q_prev
                z = pyro.sample(f"z_{t}", dist.OneHotCategorical(logits=logits))


def hmm_problem(steps: int = 20, batch: int = 16) -> tuple[Callable, Callable, torch.Tensor]:
    torch.manual_seed(0)
    net = HMM(steps)
    return net.model, net.guide, torch.randn(batch, steps)


def sbn_problem(batch: int = 24) -> tuple[Callable, Callable, torch.Tensor]:
    from pyro_discrete.models import make_model

    torch.manual_seed(0)
    net = make_model("sbn_linear2")
    return net.model, net.guide, torch.bernoulli(torch.full((batch, 784), 0.3))


def _optim():
    return pyro.optim.Adam({"lr": 1e-3})


def _median_ms(step: Callable, x, steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def measure(problem: Callable, estimator: str, stacked: bool, steps: int) -> dict:
    """Eager step, recording step and replayed step (ms) of one configuration."""
    model, guide, x = problem()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    elbo = DiscreteELBO(estimator=estimator, vectorize_passes=stacked)
    svi = pyro.infer.SVI(model, guide, _optim(), elbo)
    for _ in range(3):  # dependencies, checks, the stacking trial
        svi.step(x)
    eager = _median_ms(svi.step, x, steps)
    stacking = [s.relaxed_stacking for s in elbo._structures.values()]
    compiled = CompiledSVI(model, guide, _optim(), elbo, backend="trace")
    compiled.step(x)  # eager first sight (the ELBO's structures are already known)
    start = time.perf_counter()
    compiled.step(x)  # recorded
    recording = 1e3 * (time.perf_counter() - start)
    replay = _median_ms(lambda v: float(compiled.step(v)), x, steps)
    return {"eager": eager, "trace": recording, "replay": replay, "stacked": stacking}


PROBLEMS = {"sbn": ("sbn_linear2 b24", sbn_problem), "hmm": ("hmm T=20 b16", hmm_problem)}


def relaxed_pass_table(
    rounds: int, steps: int, models=("sbn", "hmm"), estimators=("rebar", "relax")
) -> list[str]:
    problems = dict(PROBLEMS[m] for m in models)
    results: dict = {}
    for _ in range(rounds):
        for name, problem in problems.items():
            for estimator in estimators:
                for stacked in (True, False):
                    out = measure(problem, estimator, stacked, steps)
                    results.setdefault((name, estimator, stacked), []).append(out)
    lines = [
        "| model | estimator | passes | eager step ms | trace (record) ms | replay ms |",
        "|---|---|---|---:|---:|---:|",
    ]
    for (name, estimator, stacked), runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("eager", "trace", "replay")}
        base = results[(name, estimator, False)]
        ref = {k: statistics.median(r[k] for r in base) for k in med}
        label = "stacked" if stacked else "looped"
        if stacked and not all(all(r["stacked"]) for r in runs):
            label += " (fell back)"
        cells = " | ".join(f"{med[k]:.1f} ({med[k] / ref[k]:.2f})" for k in med)
        lines.append(f"| {name} | {estimator} | {label} | {cells} |")
    return lines


def _model_problems() -> dict:
    from pyro_discrete.models import make_model
    from pyro_discrete.models.mixture_of_experts import synthetic_moe_data

    out = {}
    for name in ("sbn_linear1", "sbn_linear2", "sbn_nonlinear", "categorical_vae"):
        out[name] = (lambda n=name: make_model(n), (torch.bernoulli(torch.full((24, 784), 0.3)),))
    moe = synthetic_moe_data(num_points=24)
    out["mixture_of_experts"] = (lambda: make_model("mixture_of_experts"), (moe.x, moe.y))
    return out


def trace_table() -> list[str]:
    """The recording step of CompiledSVI (seconds) per model and estimator."""
    lines = ["| model | rebar record s | nvil record s |", "|---|---:|---:|"]
    problems = dict(_model_problems())
    model, guide, x = hmm_problem()
    problems["hmm T=20"] = (None, (x,), model, guide)
    for name, spec in problems.items():
        cells = []
        for estimator in ("rebar", "nvil"):
            torch.manual_seed(0)
            if spec[0] is None:
                _, args, m, g = spec
            else:
                net = spec[0]()
                args, m, g = spec[1], net.model, net.guide
            pyro.clear_param_store()
            svi = CompiledSVI(m, g, _optim(), DiscreteELBO(estimator=estimator), backend="trace")
            svi.step(*args)
            start = time.perf_counter()
            svi.step(*args)
            cells.append(f"{time.perf_counter() - start:.2f}")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.relaxed_passes", description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--trace-models", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", nargs="+", default=["sbn", "hmm"], choices=sorted(PROBLEMS))
    p.add_argument("--estimators", nargs="+", default=["rebar", "relax"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); medians, (ratio to looped)")
    for line in relaxed_pass_table(args.rounds, args.steps, args.models, args.estimators):
        print(line, flush=True)
    if args.trace_models:
        for line in trace_table():
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
