"""Step-time, memory and scaling benchmarks: ``python -m benchmarks.run``.

Every variant (hand-written PyTorch, ``pyro_discrete``'s ``DiscreteELBO``, Pyro's
``TraceGraph_ELBO``) is timed in this one process on the same model, data and thread
count. Rounds are interleaved in a shuffled order so that load from other processes on a
shared machine hits every variant alike; the figure reported is the median step time.

Outputs under ``--out``: ``results.csv`` (every measurement), ``results.md`` (the tables
printed here), ``scaling.png`` and ``meta.json``; with storchastic installed, also
``storchastic.json`` from ``python -m benchmarks.storchastic_peer`` (run in a subprocess
because importing storchastic patches torch globally).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import itertools
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyro
import torch
from torch import Tensor

from benchmarks import handwritten as hw
from benchmarks import jax_peers
from benchmarks.pyro_models import (
    PyroPair,
    discrete_elbo_available,
    discrete_loss,
    discrete_optim,
    make_svi,
    nvil_baselines,
    tracegraph_loss,
)

IMPLS = ("handwritten", "pyro_discrete", "tracegraph")
# With --compile: CompiledSVI (backend "auto": "cuda_graph" on CUDA, "trace" on CPU), with
# --inductor also the traced program compiled by torch.compile, and on CUDA the
# hand-written step captured in one CUDA graph (the floor).
COMPILED_IMPLS = ("compiled", "compiled_inductor", "handwritten_graph")
# The JAX peers (benchmarks/jax_peers.py, run in .venv-peers by a subprocess worker): the
# row each peer variant fills, by the worker's variant name.
PEER_IMPLS = {"numpyro_reinforce": "numpyro_jit", "jax_reinforce": "jax_jit", "jax_nvil": "jax_jit"}
PEERS_VENV = Path(__file__).resolve().parent.parent / ".venv-peers"
# Rows of the side-by-side table (issue 21), in the order.
SIDE_BY_SIDE = (
    ("handwritten", "hand-written PyTorch, eager"),
    ("numpyro_jit", "NumPyro `TraceGraph_ELBO`, jit"),
    ("jax_jit", "hand-written JAX, jit"),
    ("compiled_inductor", "pyro_discrete `CompiledSVI` trace+inductor"),
    ("compiled", "pyro_discrete `CompiledSVI` trace"),
    ("pyro_discrete", "pyro_discrete eager `SVI`"),
    ("tracegraph", "Pyro `TraceGraph_ELBO`"),
)
# Unique parameter and site names for every Pyro variant built in this process.
_VARIANT_IDS = itertools.count()
# The performance issue's targets for pyro_discrete / hand-written, by device and batch.
TARGETS = {"cpu": {24: 1.3, 256: 1.1}, "cuda": {24: 1.2, 1024: 1.05}}
# Issue 10's targets for a compiled step / hand-written *eager* step.
COMPILED_TARGETS = {"cpu": {24: 1.0, 256: 1.0}, "cuda": {24: 0.25, 1024: 0.5}}


@dataclass(frozen=True)
class ModelSpec:
    """Which model to build; ``kind`` is ``"sbn"`` or ``"categorical"``."""

    kind: str = "sbn"
    n_visible: int = 784
    n_latent: int = 200
    n_layers: int = 1
    n_groups: int = 10
    n_classes: int = 10

    def label(self) -> str:
        if self.kind == "sbn":
            dims = "-".join([str(self.n_visible)] + [str(self.n_latent)] * self.n_layers)
            return f"linear SBN {dims}"
        return f"categorical {self.n_visible}-{self.n_groups}x{self.n_classes}"

    def build(self, seed: int, device: torch.device) -> hw.LatentModel:
        torch.manual_seed(seed)
        xbar = _xbar(self.n_visible)
        net: hw.LatentModel
        if self.kind == "sbn":
            net = hw.LinearSBN(self.n_visible, self.n_latent, self.n_layers, xbar)
        else:
            net = hw.CategoricalVAE(self.n_visible, self.n_groups, self.n_classes, xbar)
        return net.to(device)


def _xbar(n_visible: int) -> Tensor:
    # Synthetic "pixel means": step time does not depend on the data values, and the suite
    # must run without the MNIST download.
    g = torch.Generator().manual_seed(1234)
    return torch.rand(n_visible, generator=g) * 0.6 + 0.05


def make_batch(spec: ModelSpec, batch: int, device: torch.device) -> Tensor:
    g = torch.Generator().manual_seed(batch)
    probs = _xbar(spec.n_visible).expand(batch, -1)
    return torch.bernoulli(probs, generator=g).to(device)


@dataclass
class Variant:
    impl: str
    estimator: str
    step: Callable[[Tensor], object]
    scope: Callable[[], contextlib.AbstractContextManager]
    note: str = ""
    times: list[float] = field(default_factory=list)
    error: str = ""
    # Tensors that persist between steps (parameters, their .grad, optimiser state); with
    # the step's own peak this gives the total footprint.
    persistent: Callable[[], list[Tensor]] = lambda: []
    # Steps taken before timing starts (tracing, compiling, capture), not timed.
    prepare_steps: int = 0
    # A variant timed elsewhere (a peer worker): ``timed(x, n)`` takes n steps and returns
    # their times in seconds; ``step`` is then unused.
    timed: Callable[[Tensor, int], list[float]] | None = None
    # Seconds from nothing to a warm step: the prepare steps (eager step, trace, compile)
    # or, for a peer, building and jitting its step.
    first_use_s: float | None = None


def _optim_state_tensors(optim: torch.optim.Optimizer) -> list[Tensor]:
    return [t for st in optim.state.values() for t in st.values() if torch.is_tensor(t)]


def _with_grads(params: list[Tensor]) -> list[Tensor]:
    return [*params, *(p.grad for p in params if p.grad is not None)]


def _hand_persistent(step: hw.Step) -> Callable[[], list[Tensor]]:
    def tensors() -> list[Tensor]:
        params = list(step.trainable())
        out = _with_grads(params) + _optim_state_tensors(step.optim)
        if isinstance(step, hw.Rebar):
            out += _with_grads(step.cv_params()) + _optim_state_tensors(step.cv_optim)
        return out + list(step.model.buffers())

    return tensors


def _pyro_persistent(svi: pyro.infer.SVI) -> Callable[[], list[Tensor]]:
    # Called inside the variant's param-store scope.
    def tensors() -> list[Tensor]:
        store = pyro.get_param_store()
        params = [store._params[name] for name in store.keys()]
        return _with_grads(params) + _pyro_optim_states(svi.optim)

    return tensors


def _pyro_optim_states(optim: object) -> list[Tensor]:
    # PyroOptim keeps one torch optimiser per parameter in ``optim_objs``; a fused wrapper
    # (pyro_discrete's MultiTensorAdam) keeps one elsewhere: collect every torch optimiser
    # among its attributes.
    found: list[torch.optim.Optimizer] = []
    for value in vars(optim).values():
        if isinstance(value, torch.optim.Optimizer):
            found.append(value)
        elif isinstance(value, dict):
            found += [v for v in value.values() if isinstance(v, torch.optim.Optimizer)]
    return [t for opt in found for t in _optim_state_tensors(opt)]


def _nbytes(tensors: list[Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


@contextlib.contextmanager
def _no_scope() -> Iterator[None]:
    yield


def _pyro_scope() -> Callable[[], contextlib.AbstractContextManager]:
    # Each Pyro variant keeps its own param store so that names (and any control-variate
    # parameters an ELBO registers) never collide between variants or model sizes.
    state: dict = {"params": {}, "constraints": {}}
    return lambda: pyro.get_param_store().scope(state)


def build_variants(
    spec: ModelSpec,
    estimator: str,
    device: torch.device,
    impls: tuple[str, ...],
    seed: int = 0,
    peers: tuple[PeerWorker | None, str] | None = None,
    warmup: int = 3,
) -> list[Variant]:
    out: list[Variant] = []
    if peers is not None:
        out += _peer_variants(peers[0], peers[1], spec, estimator, warmup)
    if "handwritten" in impls:
        step = hw.make_step(estimator, spec.build(seed, device))
        v = Variant("handwritten", estimator, step.step, _no_scope)
        v.persistent = _hand_persistent(step)
        out.append(v)
    if "pyro_discrete" in impls:
        ok, why = discrete_elbo_available()
        if ok:
            net = spec.build(seed, device)
            # NVIL's baseline reads x through the site's infer dict, as in the other two
            # implementations (pyro_discrete would otherwise build one on the logits).
            baselines = nvil_baselines(net) if estimator == "nvil" else None
            pair = PyroPair(net, f"pd{next(_VARIANT_IDS)}_{estimator}", baselines)
            try:
                optim, optim_name = discrete_optim()
                svi = make_svi(pair, discrete_loss(estimator), optim=optim)
                v = Variant("pyro_discrete", estimator, svi.step, _pyro_scope(), optim_name)
                v.persistent = _pyro_persistent(svi)
                out.append(v)
            except Exception as exc:  # report, keep benchmarking the rest
                v = Variant("pyro_discrete", estimator, _unavailable, _no_scope)
                v.error = f"{type(exc).__name__}: {exc}"
                out.append(v)
        else:
            v = Variant("pyro_discrete", estimator, _unavailable, _no_scope)
            v.error = f"skipped: pyro_discrete.infer.DiscreteELBO not importable ({why})"
            out.append(v)
    for impl, backend in (("compiled", "auto"), ("compiled_inductor", "trace+inductor")):
        if impl in impls:
            out.append(_compiled_variant(impl, backend, spec, estimator, device, seed))
    if "handwritten_graph" in impls and device.type == "cuda":
        out.append(_handwritten_graph_variant(spec, estimator, device, seed))
    if "tracegraph" in impls and estimator in ("reinforce", "nvil"):
        net = spec.build(seed, device)
        baselines = nvil_baselines(net) if estimator == "nvil" else None
        pair = PyroPair(net, f"tg{next(_VARIANT_IDS)}_{estimator}", baselines)
        svi = make_svi(pair, tracegraph_loss())
        note = "Pyro nn_baseline, no variance normalisation" if estimator == "nvil" else ""
        v = Variant("tracegraph", estimator, svi.step, _pyro_scope(), note)
        v.persistent = _pyro_persistent(svi)
        out.append(v)
    return out


def _compiled_variant(
    impl: str, backend: str, spec: ModelSpec, estimator: str, device: torch.device, seed: int
) -> Variant:
    """pyro_discrete's step through CompiledSVI: traced (or captured) once, replayed."""
    try:
        from pyro_discrete.infer import CompiledSVI

        net = spec.build(seed, device)
        baselines = nvil_baselines(net) if estimator == "nvil" else None
        pair = PyroPair(net, f"pc{next(_VARIANT_IDS)}_{estimator}", baselines)
        optim, optim_name = discrete_optim()
        svi = CompiledSVI(pair.model, pair.guide, optim, discrete_loss(estimator), backend=backend)
    except Exception as exc:
        v = Variant(impl, estimator, _unavailable, _no_scope)
        v.error = f"{type(exc).__name__}: {exc}"
        return v
    v = Variant(impl, estimator, svi.step, _pyro_scope(), f"CompiledSVI({backend}), {optim_name}")
    v.persistent = _pyro_persistent(svi)
    # eager first sight, trace (or capture), then replays; inductor compiles on the 3rd
    v.prepare_steps = 4
    return v


def _handwritten_graph_variant(
    spec: ModelSpec, estimator: str, device: torch.device, seed: int
) -> Variant:
    """The hand-written step captured in one CUDA graph (capturable Adam): the floor."""
    step = hw.make_step(estimator, spec.build(seed, device))
    for name in ("optim", "cv_optim"):
        optimizer = getattr(step, name, None)
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["capturable"] = True
    graph: dict = {}

    def replay(x: Tensor) -> Tensor:
        if "graph" not in graph:
            static_x = x.clone()
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    step.step(static_x)
            torch.cuda.current_stream(device).wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out = step.step(static_x)
            graph.update(graph=g, x=static_x, out=out)
        graph["x"].copy_(x)
        graph["graph"].replay()
        return graph["out"]

    v = Variant("handwritten_graph", estimator, replay, _no_scope, "one CUDA graph")
    v.persistent = _hand_persistent(step)
    v.prepare_steps = 1
    return v


def _unavailable(x: Tensor) -> None:
    raise RuntimeError("variant unavailable")


class PeerWorker:
    """The JAX peer worker (``python -m benchmarks.jax_peers --worker`` in ``.venv-peers``),
    spoken to in JSON lines over a pipe (see :mod:`benchmarks.jax_peers`)."""

    def __init__(self, python: Path, threads: int) -> None:
        env = dict(os.environ)
        root = Path(__file__).resolve().parent.parent
        env["PYTHONPATH"] = str(root)
        env["JAX_PLATFORMS"] = "cpu"
        if threads == 1:
            env["XLA_FLAGS"] = jax_peers.ONE_THREAD_XLA_FLAGS
        self.proc = subprocess.Popen(
            [str(python), "-m", "benchmarks.jax_peers", "--worker", "--threads", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
            env=env,
        )
        self.info = self.ask({"op": "info"})

    def ask(self, request: dict) -> dict:
        """Send one request, return its reply; a reply with ``ok: false`` raises."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"jax peer worker exited with code {self.proc.returncode}")
        self.proc.stdin.write(jax_peers.encode(request))
        self.proc.stdin.flush()
        reply = jax_peers.decode(self.proc.stdout.readline())
        if not reply.get("ok"):
            raise RuntimeError(f"jax peer: {reply.get('error', reply)}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.ask({"op": "quit"})
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_peer_worker(mode: str, threads: int) -> tuple[PeerWorker | None, str]:
    """The worker, or None and why not (``mode``: ``auto`` runs it when installed)."""
    python = PEERS_VENV / "bin" / "python"
    if mode == "off":
        return None, "off (--peers off)"
    if not python.exists():
        return None, f"not installed (`make peers` creates {PEERS_VENV.name})"
    try:
        worker = PeerWorker(python, threads)
    except Exception as exc:
        return None, f"failed to start: {type(exc).__name__}: {exc}"
    info = worker.info
    return worker, f"jax {info['jax']}, numpyro {info['numpyro']}, XLA_FLAGS={info['xla_flags']!r}"


def _peer_variants(
    worker: PeerWorker | None, why: str, spec: ModelSpec, estimator: str, warmup: int
) -> list[Variant]:
    """The peer rows for one estimator: timed in the worker, one request per round."""
    out = []
    for name, est in jax_peers.VARIANTS.items():
        if est != estimator:
            continue
        impl = PEER_IMPLS[name]
        if worker is None or spec.kind != "sbn" or spec.n_layers != 1:
            v = Variant(impl, estimator, _unavailable, _no_scope)
            v.error = why if worker is None else "peer: one-layer linear SBN only"
            out.append(v)
            continue
        v = Variant(impl, estimator, _unavailable, _no_scope, f"{name} in .venv-peers")
        built: dict[str, str] = {}

        def timed(x: Tensor, n: int, name=name, built=built, v=v) -> list[float]:
            if "id" not in built:
                reply = worker.ask(
                    {
                        "op": "build",
                        "variant": name,
                        "batch": x.shape[0],
                        "n_visible": spec.n_visible,
                        "n_latent": spec.n_latent,
                        "x": jax_peers.pack_bits(x.to(torch.uint8).flatten().tolist()),
                        "xbar": _xbar(spec.n_visible).tolist(),
                        "warmup": warmup,
                    }
                )
                built["id"] = reply["id"]
                v.first_use_s = reply["build_and_first_step_ms"] / 1e3
            reply = worker.ask({"op": "time", "id": built["id"], "steps": n})
            return [t / 1e3 for t in reply["times_ms"]]

        v.timed = timed
        out.append(v)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variants(
    variants: list[Variant],
    x: Tensor,
    device: torch.device,
    warmup: int,
    rounds: int,
    steps: int,
    budget_s: float,
    rng: random.Random,
) -> None:
    """Fill ``v.times`` (seconds per step); a failing variant gets ``v.error`` instead."""
    live = [v for v in variants if not v.error]
    est: dict[int, float] = {}
    for v in live:
        try:
            if v.timed is not None:  # a peer: builds (and jits) on its first request
                warm = v.timed(x, max(warmup, 1))
                est[id(v)] = statistics.median(warm)
                continue
            with v.scope():
                t_first = time.perf_counter()
                for _ in range(v.prepare_steps):
                    v.step(x)
                _sync(device)
                if v.prepare_steps:
                    v.first_use_s = time.perf_counter() - t_first
                t0 = time.perf_counter()
                for _ in range(max(warmup, 1)):
                    v.step(x)
                _sync(device)
                est[id(v)] = (time.perf_counter() - t0) / max(warmup, 1)
        except Exception as exc:
            v.error = f"{type(exc).__name__}: {exc}"
    live = [v for v in live if not v.error]
    for _ in range(rounds):
        rng.shuffle(live)
        for v in live:
            # Cap the time spent on slow configurations; every variant still gets at least
            # one timed step per round.
            n = max(1, min(steps, math.ceil(budget_s / rounds / max(est[id(v)], 1e-6))))
            if v.error:
                continue
            if v.timed is not None:
                try:
                    v.times += v.timed(x, n)
                except Exception as exc:
                    v.error = f"{type(exc).__name__}: {exc}"
                continue
            with v.scope():
                for _ in range(n):
                    _sync(device)
                    t0 = time.perf_counter()
                    v.step(x)
                    _sync(device)
                    v.times.append(time.perf_counter() - t0)


def peak_step_memory(v: Variant, x: Tensor, device: torch.device) -> tuple[float, float]:
    """Peak bytes allocated during one step above what was live before it, and the bytes
    of the persistent tensors (parameters, gradients, optimiser state) before it."""
    with v.scope():
        persistent = float(_nbytes(v.persistent()))
        if device.type == "cuda":
            _sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            v.step(x)
            _sync(device)
            return float(torch.cuda.max_memory_allocated(device) - before), persistent
        # tracemalloc cannot see torch's allocator; the profiler's allocation records can.
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            v.step(x)
        records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        records.sort(key=lambda e: e.start_ns())
        current = peak = 0
        cpu = torch._C._autograd.DeviceType.CPU
        for e in records:
            if e.device_type() == cpu:
                current += e.nbytes()
                peak = max(peak, current)
        return float(peak), persistent


@dataclass
class Row:
    table: str
    device: str
    threads: int
    model: str
    impl: str
    estimator: str
    batch: int
    layers: int
    categories: int
    median_ms: float | None = None
    q1_ms: float | None = None
    q3_ms: float | None = None
    min_ms: float | None = None
    n_steps: int = 0
    ratio_vs_handwritten: float | None = None
    # Ratio of the fastest steps: less sensitive to load from other processes than the
    # median, a cross-check when the machine is shared.
    min_ratio_vs_handwritten: float | None = None
    peak_mb: float | None = None
    peak_vs_reinforce: float | None = None
    persistent_mb: float | None = None
    total_vs_reinforce: float | None = None
    # seconds from nothing to a warm step (trace, compile, jit); None when not measured
    first_use_s: float | None = None
    status: str = "ok"
    note: str = ""


def _quantiles(times: list[float]) -> tuple[float, float, float]:
    ms = sorted(t * 1e3 for t in times)
    if len(ms) == 1:
        return ms[0], ms[0], ms[0]
    q = statistics.quantiles(ms, n=4, method="inclusive")
    return q[0], statistics.median(ms), q[2]


def measure(
    table: str,
    spec: ModelSpec,
    batch: int,
    estimators: tuple[str, ...],
    impls: tuple[str, ...],
    args: argparse.Namespace,
    device: torch.device,
    rng: random.Random,
    with_memory: bool = False,
    peers: tuple[PeerWorker | None, str] | None = None,
) -> list[Row]:
    variants: list[Variant] = []
    for est in estimators:
        variants += build_variants(spec, est, device, impls, peers=peers, warmup=args.warmup)
    x = make_batch(spec, batch, device)
    time_variants(variants, x, device, args.warmup, args.rounds, args.steps, args.budget, rng)
    rows = []
    hand = {
        v.estimator: statistics.median(v.times)
        for v in variants
        if v.impl == "handwritten" and v.times
    }
    hand_min = {v.estimator: min(v.times) for v in variants if v.impl == "handwritten" and v.times}
    for v in variants:
        row = Row(
            table=table,
            device=device.type,
            threads=torch.get_num_threads(),
            model=spec.label(),
            impl=v.impl,
            estimator=v.estimator,
            batch=batch,
            layers=spec.n_layers if spec.kind == "sbn" else 1,
            categories=spec.n_classes if spec.kind == "categorical" else 2,
            note=v.note,
            first_use_s=v.first_use_s,
        )
        if v.error:
            row.status = v.error.splitlines()[0][:300]
        elif v.times:
            row.q1_ms, row.median_ms, row.q3_ms = _quantiles(v.times)
            row.n_steps = len(v.times)
            row.min_ms = min(v.times) * 1e3
            if v.estimator in hand:
                row.ratio_vs_handwritten = statistics.median(v.times) / hand[v.estimator]
                row.min_ratio_vs_handwritten = min(v.times) / hand_min[v.estimator]
            if with_memory and v.timed is None:
                try:
                    peak, persistent = peak_step_memory(v, x, device)
                    row.peak_mb, row.persistent_mb = peak / 2**20, persistent / 2**20
                except Exception as exc:
                    row.note = (row.note + f"; memory: {type(exc).__name__}: {exc}").strip("; ")
        rows.append(row)
    if with_memory:
        base = {r.impl: r for r in rows if r.estimator == "reinforce" and r.peak_mb}
        for r in rows:
            b = base.get(r.impl)
            if r.peak_mb is not None and b is not None and b.peak_mb:
                r.peak_vs_reinforce = r.peak_mb / b.peak_mb
                if r.persistent_mb is not None and b.persistent_mb is not None:
                    total = b.peak_mb + b.persistent_mb
                    r.total_vs_reinforce = (r.peak_mb + r.persistent_mb) / total
    for v in variants:
        v.times.clear()
    return rows


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


def _fmt(v: float | None, digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def headline_table(rows: list[Row], device: str) -> str:
    targets = TARGETS.get(device, {})
    body = []
    keyed = {(r.impl, r.estimator, r.batch): r for r in rows}
    for batch in sorted({r.batch for r in rows}):
        for est in sorted({r.estimator for r in rows}, key=hw.ESTIMATORS.index):
            h = keyed.get(("handwritten", est, batch))
            ours = keyed.get(("pyro_discrete", est, batch))
            tg = keyed.get(("tracegraph", est, batch))
            target = targets.get(batch)
            verdict = ""
            if ours and ours.ratio_vs_handwritten is not None and target is not None:
                verdict = "pass" if ours.ratio_vs_handwritten <= target else "FAIL"
            elif ours and ours.status != "ok":
                verdict = "n/a"
            body.append(
                [
                    str(batch),
                    est,
                    _fmt(h.median_ms if h else None),
                    _fmt(ours.median_ms if ours else None),
                    _fmt(ours.ratio_vs_handwritten if ours else None),
                    _fmt(ours.min_ratio_vs_handwritten if ours else None),
                    "" if target is None else f"≤ {target}",
                    verdict,
                    _fmt(tg.median_ms if tg else None),
                    _fmt(tg.ratio_vs_handwritten if tg else None),
                ]
            )
    header = [
        "batch",
        "estimator",
        "hand-written ms",
        "pyro_discrete ms",
        "ours / hand",
        "(fastest-step ratio)",
        "target",
        "verdict",
        "TraceGraph ms",
        "TraceGraph / hand",
    ]
    return _md_table(header, body)


def compiled_table(rows: list[Row], device: str) -> str:
    """Compiled steps next to eager ones, every ratio over the hand-written eager step."""
    targets = COMPILED_TARGETS.get(device, {})
    keyed = {(r.impl, r.estimator, r.batch): r for r in rows}
    body = []
    for batch in sorted({r.batch for r in rows}):
        for est in sorted({r.estimator for r in rows}, key=hw.ESTIMATORS.index):

            def get(impl: str, attr: str, batch=batch, est=est) -> float | None:
                r = keyed.get((impl, est, batch))
                return None if r is None else getattr(r, attr)

            compiled = get("compiled", "ratio_vs_handwritten")
            target = targets.get(batch)
            verdict = ""
            if compiled is not None and target is not None:
                verdict = "pass" if compiled <= target else "FAIL"
            floor = get("handwritten_graph", "median_ms")
            compiled_ms = get("compiled", "median_ms")
            body.append(
                [
                    str(batch),
                    est,
                    _fmt(get("handwritten", "median_ms")),
                    _fmt(get("pyro_discrete", "ratio_vs_handwritten")),
                    _fmt(compiled_ms),
                    _fmt(compiled),
                    _fmt(get("compiled", "min_ratio_vs_handwritten")),
                    _fmt(get("compiled_inductor", "ratio_vs_handwritten")),
                    "" if target is None else f"≤ {target}",
                    verdict,
                    _fmt(floor),
                    _fmt(compiled_ms / floor if compiled_ms and floor else None),
                ]
            )
    header = [
        "batch",
        "estimator",
        "hand-written ms",
        "eager / hand",
        "compiled ms",
        "compiled / hand",
        "(fastest-step ratio)",
        "compiled+inductor / hand",
        "target",
        "verdict",
        "hand-written CUDA graph ms",
        "compiled / hand graph",
    ]
    return _md_table(header, body)


def side_by_side_table(rows: list[Row]) -> str:
    """Issue 21's table: one row per implementation, ``median ms (÷ hand-written eager)``
    per estimator and batch, and the first-use cost (trace, compile, jit) in seconds."""
    keyed = {(r.impl, r.estimator, r.batch): r for r in rows}
    batches = sorted({r.batch for r in rows})
    ests = sorted({r.estimator for r in rows}, key=hw.ESTIMATORS.index)
    columns = [(b, e) for b in batches for e in ests]
    body = []
    for impl, label in SIDE_BY_SIDE:
        cells, firsts = [], []
        present = False
        for batch, est in columns:
            r = keyed.get((impl, est, batch))
            if r is None:
                cells.append("-")
                continue
            present = True
            if r.median_ms is None:
                cells.append("n/a" if r.status == "ok" else r.status[:60])
                continue
            ratio = r.ratio_vs_handwritten
            cells.append(f"{r.median_ms:.2f}" + ("" if ratio is None else f" ({ratio:.2f})"))
            if r.first_use_s is not None:
                firsts.append(r.first_use_s)
        if not present:
            continue
        spread = {f"{s:.1f}" for s in (min(firsts), max(firsts))} if firsts else set()
        first = "-".join(sorted(spread, key=float))
        body.append([label, *cells, first])
    header = ["step (median ms, ÷ hand-written)"]
    header += [f"{e.upper() if e != 'nvil' else 'NVIL'} b{b}" for b, e in columns]
    header.append("first use s")
    return _md_table(header, body)


def memory_table(rows: list[Row]) -> str:
    body = [
        [
            r.impl,
            r.estimator,
            str(r.batch),
            _fmt(r.peak_mb),
            _fmt(r.peak_vs_reinforce),
            _fmt(r.persistent_mb),
            _fmt(r.total_vs_reinforce),
        ]
        for r in rows
        if r.peak_mb is not None
    ]
    header = [
        "impl",
        "estimator",
        "batch",
        "step peak MB (above live)",
        "× REINFORCE",
        "persistent MB (params, grads, optimiser)",
        "total × REINFORCE",
    ]
    return _md_table(header, body)


def scaling_table(rows: list[Row], key: str) -> str:
    body = []
    for r in rows:
        body.append(
            [
                str(getattr(r, key)),
                r.impl,
                r.estimator,
                _fmt(r.median_ms),
                _fmt(r.ratio_vs_handwritten),
                "" if r.status == "ok" else r.status[:80],
            ]
        )
    header = [key, "impl", "estimator", "median ms", "/ hand-written", "status"]
    return _md_table(header, body)


def status_notes(rows: list[Row]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        if r.status != "ok":
            seen.setdefault(f"{r.impl} {r.estimator}: {r.status}", None)
    return list(seen)


def plot_scaling(tables: dict[str, tuple[str, list[Row]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(5 * len(tables), 4), squeeze=False)
    # Colour says which estimator, line style which implementation.
    styles = {"handwritten": "-", "pyro_discrete": "--", "tracegraph": ":"}
    colours = dict(zip(hw.ESTIMATORS, ("C0", "C1", "C2", "C3"), strict=True))
    for ax, (title, (key, rows)) in zip(axes[0], tables.items(), strict=True):
        for impl in IMPLS:
            for est in hw.ESTIMATORS:
                pts = sorted(
                    (getattr(r, key), r.median_ms)
                    for r in rows
                    if r.impl == impl and r.estimator == est and r.median_ms
                )
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(
                        xs,
                        ys,
                        styles[impl],
                        color=colours[est],
                        marker="o",
                        ms=3,
                        label=f"{impl} {est}",
                    )
        ax.set_xscale("log" if key != "layers" else "linear")
        ax.set_yscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("median ms / step")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_storchastic(args: argparse.Namespace, out: Path) -> tuple[str, dict | None]:
    """Run the storchastic peer in a subprocess; return a Markdown section and its JSON."""
    import importlib.util

    if importlib.util.find_spec("storch") is None:
        return (
            "storchastic is not installed; `pip install -c constraints.txt -e .[bench]` "
            "adds it (the peer runs in its own process).",
            None,
        )
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.storchastic_peer",
        "--out",
        str(out),
        "--threads",
        str(args.threads),
    ]
    if args.quick:
        cmd.append("--quick")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.storchastic_timeout)
    except subprocess.TimeoutExpired:
        return f"storchastic peer timed out after {args.storchastic_timeout} s", None
    path = out / "storchastic.json"
    if proc.returncode != 0 or not path.exists():
        tail = (proc.stdout + proc.stderr)[-1500:]
        return f"storchastic peer failed (exit {proc.returncode}):\n\n```\n{tail}\n```", None
    data = json.loads(path.read_text())
    return data.get("markdown", ""), data


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch-sizes", default=None, help="headline batches, e.g. 24,256")
    p.add_argument("--estimators", default=",".join(hw.ESTIMATORS))
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds (smoke test)")
    p.add_argument("--out", default="runs/bench", help="output directory")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=6, help="timed steps per round (at most)")
    p.add_argument("--budget", type=float, default=4.0, help="seconds per variant per config")
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-storchastic", action="store_true")
    p.add_argument("--storchastic-timeout", type=int, default=900)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time CompiledSVI (and, on CUDA, the hand-written step in a CUDA graph)",
    )
    p.add_argument(
        "--inductor",
        action="store_true",
        help="with --compile: also the traced program compiled by torch.compile (minutes)",
    )
    p.add_argument(
        "--peers",
        choices=["auto", "on", "off"],
        default="auto",
        help="NumPyro / JAX jitted steps from .venv-peers (make peers); auto: when installed "
        "(not with --quick)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.rounds, args.steps, args.budget = 1, 1, 2, 0.5
        if args.peers == "auto":  # a smoke test: jitting the peers would take longer
            args.peers = "off"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda requested but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    # Validation is a debugging aid; the hand-written steps do not validate either.
    pyro.enable_validation(False)
    rng = random.Random(args.seed)
    estimators = tuple(e for e in args.estimators.split(",") if e)
    impls = tuple(i for i in args.impls.split(",") if i)
    if args.compile:
        impls += ("compiled",) + (("compiled_inductor",) if args.inductor else ())
        impls += ("handwritten_graph",) if device.type == "cuda" else ()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    default_batches = {"cpu": "24,256", "cuda": "24,1024"}[device.type]
    batches = [int(b) for b in (args.batch_sizes or default_batches).split(",")]
    if args.quick:
        base = ModelSpec(n_visible=64, n_latent=16)
        batches = batches if args.batch_sizes else [8]
        scale_batches, scale_layers, scale_classes = [8, 32], [1, 2], [2, 5]
        cat_groups = 3
    else:
        base = ModelSpec()
        scale_batches = [24, 64, 256, 1024, 4096]
        scale_layers = [1, 2, 4, 8]
        scale_classes = [2, 10, 100, 1000]
        cat_groups = 10

    ok, why = discrete_elbo_available()
    header = [
        f"device: {device.type}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        f"torch {torch.__version__}, pyro {pyro.__version__}, threads {torch.get_num_threads()}",
        f"python {platform.python_version()}, {platform.machine()}, cpus {os.cpu_count()}, "
        "load average at start " + ", ".join(f"{v:.1f}" for v in os.getloadavg()),
        f"timing: warm-up {args.warmup}, {args.rounds} interleaved rounds of ≤ {args.steps} "
        f"steps, median; Pyro validation off; synthetic binary data",
    ]
    if not ok:
        header.append(
            "NOTE: pyro_discrete rows skipped: pyro_discrete.infer.DiscreteELBO does not "
            f"import yet ({why}); they are picked up automatically once it does."
        )
    for line in header:
        print(line)
    print()

    all_rows: list[Row] = []
    sections: list[str] = ["# pyro_discrete benchmarks", "", *[f"- {h}" for h in header], ""]

    def emit(title: str, text: str) -> None:
        print(f"## {title}\n\n{text}\n", flush=True)
        sections.extend([f"## {title}", "", text, ""])

    peer_worker, peer_status = start_peer_worker(args.peers, args.threads)
    if args.peers == "on" and peer_worker is None:
        print(f"--peers on, but the JAX peer is {peer_status}", file=sys.stderr)
        return 2
    header.append(f"JAX peers: {peer_status}")
    print(header[-1])
    peers = (peer_worker, peer_status) if device.type == "cpu" else None

    headline_rows: list[Row] = []
    for batch in batches:
        rows = measure(
            "headline",
            base,
            batch,
            estimators,
            impls,
            args,
            device,
            rng,
            with_memory=not args.no_memory,
            peers=peers,
        )
        headline_rows += rows
    if peer_worker is not None:
        peer_worker.close()
    all_rows += headline_rows
    emit(
        f"Step time on the {base.label()} ({device.type})",
        headline_table(headline_rows, device.type)
        + "\n\nRatios divide by the hand-written step of the same estimator; TraceGraph "
        "NVIL is Pyro's nn_baseline (no variance normalisation); TraceGraph has no "
        "REBAR/RELAX.",
    )
    if args.compile:
        emit(
            f"Compiled steps on the {base.label()} ({device.type})",
            compiled_table(headline_rows, device.type)
            + "\n\nCompiled: `CompiledSVI` (backend auto: one CUDA graph on CUDA, a replayed "
            "make_fx trace on the CPU), timed after its program is built; every ratio divides "
            "by the hand-written *eager* step of the same estimator in this run. The "
            "hand-written CUDA graph (capturable Adam) is the floor.",
        )
    if peers is not None:
        emit(
            f"Side by side on the {base.label()} (cpu, {torch.get_num_threads()} thread(s))",
            side_by_side_table(headline_rows)
            + f"\n\nJAX peers: {peer_status}. Every row is timed in this one run, rounds "
            "interleaved (the peers in their own process, one request per round); ratios "
            "divide by the hand-written eager PyTorch step. First use: seconds from nothing to "
            "a warm step (CompiledSVI: eager step, trace, compile; peers: build and jit).",
        )
    if not args.no_memory:
        emit(
            "Peak memory of one step (target: REBAR/RELAX within 3× REINFORCE)",
            memory_table(headline_rows),
        )

    plots: dict[str, tuple[str, list[Row]]] = {}
    if not args.no_scaling:
        # Headline batches are not timed twice; their rows are copied into this table.
        rows = [
            dataclasses.replace(r, table="batch", peak_mb=None, peak_vs_reinforce=None)
            for r in headline_rows
            if r.batch in scale_batches
        ]
        for batch in scale_batches:
            if batch not in batches:
                rows += measure("batch", base, batch, estimators, impls, args, device, rng)
        rows.sort(key=lambda r: (r.batch, r.impl, r.estimator))
        all_rows += rows
        emit(f"Scaling with batch size ({base.label()})", scaling_table(rows, "batch"))
        plots["batch size"] = ("batch", rows)

        rows = []
        batch0 = scale_batches[0]
        for layers in scale_layers:
            spec = ModelSpec(n_visible=base.n_visible, n_latent=base.n_latent, n_layers=layers)
            rows += measure("layers", spec, batch0, estimators, impls, args, device, rng)
        all_rows += rows
        emit(
            f"Scaling with stochastic layers (linear SBN, batch {batch0})",
            scaling_table(rows, "layers"),
        )
        plots["stochastic layers"] = ("layers", rows)

        rows = []
        for classes in scale_classes:
            spec = ModelSpec(
                kind="categorical",
                n_visible=base.n_visible,
                n_groups=cat_groups,
                n_classes=classes,
            )
            rows += measure("categories", spec, batch0, estimators, impls, args, device, rng)
        all_rows += rows
        emit(
            f"Scaling with category count ({cat_groups} one-hot latents, batch {batch0})",
            scaling_table(rows, "categories"),
        )
        plots["categories"] = ("categories", rows)
        plot_scaling(plots, out / "scaling.png")

    notes = status_notes(all_rows)
    if notes:
        emit("Variants that did not run", "\n".join(f"- {n}" for n in notes))

    if not args.no_storchastic:
        text, _ = run_storchastic(args, out)
        emit("storchastic (peer, separate process)", text)

    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(all_rows[0]).keys()))
        writer.writeheader()
        for r in all_rows:
            writer.writerow(asdict(r))
    (out / "results.md").write_text("\n".join(sections))
    meta = {
        "device": device.type,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_end": os.getloadavg(),
        "args": vars(args),
        "pyro_discrete_available": ok,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    print(
        f"wrote {out / 'results.csv'}, {out / 'results.md'}"
        + (f", {out / 'scaling.png'}" if plots else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
