"""``pyro-discrete compare``: train several estimators from one start, taking turns.

Every estimator starts from the same initialisation and sees the same minibatches. They
take turns, a round of a few steps each, so that all of them have done the same number of
steps whenever the time budget stops training, and so that changes in machine load affect
them alike; each run keeps its own param store and RNG stream between turns (a
:class:`_Slot`), so the result does not depend on the interleaving. Along the way the ELBO is
evaluated on fixed data (on its own RNG stream, off the training clock) and the parameters
of the reference run and every run's control-variate state are kept; at the end every
estimator's gradient variance is measured at the reference run's parameters (REBAR paper,
Tucker et al. 2017, Fig. 2).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch

from pyro_discrete.diagnostics import elbo_estimate, gradient_variance, importance_weighted_bound
from pyro_discrete.infer import ESTIMATORS

from .errors import CLIError
from .lock import RunLock
from .rundir import load_param_store_state, param_store_state
from .tasks import Task, check_model_name, make_device, make_elbo, make_task
from .training import RunState, advance, new_run, progress_bar, register_modules

__all__ = ["CompareSettings", "run_compare", "cmd_compare", "compare_settings", "compare_into"]

CV_PREFIX = "pyro_discrete/"
# NVIL divides its learning signal by a running standard deviation, which rescales its
# gradient; variances are compared on the unscaled (unbiased) estimate.
_UNSCALED = {"nvil": {"normalize_variance": False}}


def estimator_list(text: str) -> list[str]:
    """The ``--estimators`` list; :raises CLIError: if empty, unknown or repeated."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CLIError("--estimators is empty; give a comma-separated list, e.g. reinforce,rebar")
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise CLIError(
            f"unknown estimator(s) {', '.join(map(repr, unknown))}; valid names: "
            f"{', '.join(ESTIMATORS)}"
        )
    if len(set(names)) != len(names):
        raise CLIError(f"--estimators lists a name twice: {text}")
    return names


@dataclass
class CompareSettings:
    model: str
    estimators: list[str]
    steps: int
    batch_size: int
    lr: float
    cv_lr_factor: float
    seed: int
    data: str
    binarization: str
    device: str
    reference: str
    variance_points: int
    variance_samples: int
    eval_points: int
    eval_examples: int
    iw_samples: int
    time_budget: float | None


def _calibrate(
    task: Task, s: CompareSettings, device: torch.device, init: dict, steps: int = 12
) -> tuple[dict[str, float], float]:
    """Seconds per training step of each estimator, measured on a throwaway run, and the
    total start-up time (first steps build caches and control-variate networks)."""
    timings, startup = {}, 0.0
    for name in s.estimators:
        run = new_run(task, name, s.lr, s.cv_lr_factor, s.batch_size, s.seed, device, init)
        svi = run.svi
        t0 = time.perf_counter()
        for _ in range(2):
            svi.step(*task.args(run.loader.next_batch()))
        startup += time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            svi.step(*task.args(run.loader.next_batch()))
        timings[name] = (time.perf_counter() - t0) / steps
    pyro.clear_param_store()
    return timings, startup


def _plan(
    task: Task, s: CompareSettings, device: torch.device, init: dict, t_start: float
) -> tuple[int, float, dict | None]:
    """Steps per estimator, the training deadline and the calibration timings."""
    if s.time_budget is None:
        return s.steps, math.inf, None
    timings, startup = _calibrate(task, s, device, init)
    per_step = sum(timings.values())
    # a variance draw costs about one training step; the runs repeat the start-up cost
    overhead = s.variance_points * s.variance_samples * per_step * 1.2 + startup + 10
    spent = time.perf_counter() - t_start
    affordable = int((0.9 * s.time_budget - spent - overhead) / per_step)
    if affordable < 20:
        raise CLIError(
            f"--time-budget {s.time_budget:.0f}s affords only {max(affordable, 0)} steps "
            f"per estimator (about {1000 * per_step:.0f} ms for one step of all of them); "
            "raise the budget or drop estimators"
        )
    planned = min(s.steps, affordable)
    print(
        f"time budget {s.time_budget:.0f}s: planning {planned} steps per estimator "
        "(measured ms/step: " + ", ".join(f"{n} {1000 * t:.1f}" for n, t in timings.items()) + ")",
        file=sys.stderr,
    )
    return planned, t_start + 0.9 * s.time_budget, timings


def _measurement_steps(steps: int, points: int) -> list[int]:
    return sorted({max(1, round(steps * (i + 1) / points)) for i in range(points)})


class _Slot:
    """A run parked outside the live param store and RNG while other runs take their turn."""

    def __init__(self, run: RunState) -> None:
        self.run = run
        self.park()

    def park(self) -> None:
        self.store = pyro.get_param_store().get_state()
        self.rng = torch.get_rng_state()

    def resume(self) -> RunState:
        store = pyro.get_param_store()
        store.clear()
        store.set_state(self.store)  # the same tensors: modules and optimiser stay attached
        torch.set_rng_state(self.rng)
        return self.run


@dataclass
class _Probes:
    """What is measured along the training runs, and the rows of ``results.csv``."""

    settings: CompareSettings
    eval_args: tuple
    eval_steps: set[int]
    var_steps: set[int]
    results: list[dict] = field(default_factory=list)
    reference_states: dict[int, dict] = field(default_factory=dict)
    cv_states: dict[str, dict[int, dict]] = field(default_factory=dict)

    @property
    def eval_seed(self) -> int:
        return self.settings.seed + 12345

    def record(self, estimator: str, metric: str, step: int, wall: float, value: float) -> None:
        self.results.append(
            {
                "estimator": estimator,
                "metric": metric,
                "step": step,
                "wall_time_s": wall,
                "value": value,
            }
        )

    def evaluate(self, run: RunState, on_clock: bool = True) -> None:
        t0 = time.perf_counter()
        rng = torch.get_rng_state()  # a separate stream: evaluating leaves training alone
        pyro.set_rng_seed(self.eval_seed + run.step)
        value = elbo_estimate(run.model.model, run.model.guide, *self.eval_args)
        torch.set_rng_state(rng)
        self.record(run.name, "eval_elbo", run.step, run.train_time, value)
        if on_clock:  # called during training: keep it off the training time
            run.excluded += time.perf_counter() - t0

    def snapshot(self, run: RunState) -> None:
        self.cv_states.setdefault(run.name, {})[run.step] = param_store_state(CV_PREFIX)
        if run.name == self.settings.reference:
            self.reference_states[run.step] = copy.deepcopy(run.model.state_dict())

    def on_step(self, run: RunState) -> None:
        if run.step in self.eval_steps:
            self.evaluate(run)
        if run.step in self.var_steps:
            self.snapshot(run)


def _evaluation_data(task: Task, s: CompareSettings, device: torch.device) -> tuple:
    rows = task.train[: s.eval_examples]
    if task.train_probs is not None:  # dynamic binarisation: evaluate on one fixed draw
        rows = (
            torch.rand(rows.shape, generator=torch.Generator().manual_seed(s.seed)) < rows
        ).float()
    return task.args(rows.to(device))


def _train_in_turns(
    slots: dict[str, _Slot], probes: _Probes, planned: int, deadline: float, progress: bool
) -> int:
    """Rounds of a few steps per run until ``planned`` or the deadline; the steps done."""
    chunk = max(1, min(50, planned // 40))
    bar = progress_bar(planned * len(slots), 0, "training", progress)
    done = 0
    try:
        while done < planned:
            t_round = time.perf_counter()
            target = min(done + chunk, planned)
            for slot in slots.values():
                advance(slot.resume(), target, bar=bar, on_step=probes.on_step)
                slot.park()
            done = target
            if time.perf_counter() + (time.perf_counter() - t_round) > deadline:
                break
    finally:
        bar.close()
    if done < planned:
        print(f"time budget: stopped every estimator at step {done} of {planned}", file=sys.stderr)
    return done


def _finish_run(
    run: RunState, probes: _Probes, task: Task, done: int, device: torch.device
) -> dict:
    """Final measurements of one run; its summary for the report."""
    s, name = probes.settings, run.name
    if done not in probes.eval_steps:
        probes.evaluate(run, on_clock=False)
    if done not in probes.var_steps:
        probes.snapshot(run)
    for row in run.history:
        probes.record(
            name, "train_elbo_ema", row["step"], row["wall_time_s"], row["train_elbo_ema"]
        )
    # the first step builds caches and networks: reported apart from the steady rate
    ms = 1000 * (run.train_time - run.first_step_s) / max(done - 1, 1)
    probes.record(name, "ms_per_step", done, run.train_time, ms)
    probes.record(name, "first_step_s", 1, run.first_step_s, run.first_step_s)
    summary = {"ms_per_step": ms, "train_time_s": run.train_time, "first_step_s": run.first_step_s}
    if s.iw_samples:
        valid = task.args(task.split_rows("valid")[: s.eval_examples].to(device))
        pyro.set_rng_seed(probes.eval_seed)
        summary["valid_iw_bound"] = importance_weighted_bound(
            run.model.model,
            run.model.guide,
            *valid,
            num_samples=s.iw_samples,
            chunk_size=min(s.iw_samples, 50),
        )
        probes.record(
            name, f"valid_iw_bound_k{s.iw_samples}", done, run.train_time, summary["valid_iw_bound"]
        )
    return summary


def _measure_variances(task: Task, probes: _Probes, done: int, device: torch.device) -> list[int]:
    """Every estimator's gradient variance at the reference run's parameters; the steps."""
    s = probes.settings
    batch = task.args(task.loader(s.batch_size, s.seed + 1, device).next_batch())
    points = sorted(p for p in probes.reference_states if p <= done)
    print(
        f"measuring gradient variance at {len(points)} points of the {s.reference} run "
        f"({s.variance_samples} draws each)",
        file=sys.stderr,
    )
    for point in points:
        for name in s.estimators:
            pyro.clear_param_store()
            pyro.set_rng_seed(s.seed + point)
            model = task.build_model()
            model.load_state_dict(probes.reference_states[point])
            model.to(device)
            register_modules(model, batch)
            load_param_store_state(probes.cv_states[name][point])
            stats = gradient_variance(
                make_elbo(name, **_UNSCALED.get(name, {})),
                model.model,
                model.guide,
                *batch,
                num_samples=s.variance_samples,
            )
            probes.record(name, "grad_log_variance", point, float("nan"), stats.log_mean_variance)
    pyro.clear_param_store()
    return points


def run_compare(s: CompareSettings, out: Path, progress: bool = True) -> Path:
    """Train every estimator from one initialisation and write the report to ``out``."""
    t_start = time.perf_counter()
    device = make_device(s.device)
    task = make_task(s.model, s.data, s.binarization, s.seed)
    pyro.clear_param_store()
    pyro.set_rng_seed(s.seed)
    init = copy.deepcopy(task.build_model().state_dict())
    planned, deadline, timings = _plan(task, s, device, init, t_start)
    probes = _Probes(
        s,
        _evaluation_data(task, s, device),
        set(_measurement_steps(planned, s.eval_points)),
        set(_measurement_steps(planned, s.variance_points)),
    )
    slots = {}
    for name in s.estimators:
        run = new_run(task, name, s.lr, s.cv_lr_factor, s.batch_size, s.seed, device, init)
        probes.evaluate(run, on_clock=False)
        slots[name] = _Slot(run)
    done = _train_in_turns(slots, probes, planned, deadline, progress)
    summaries = {}
    for name, slot in slots.items():
        summaries[name] = _finish_run(slot.resume(), probes, task, done, device)
        slot.park()
    del slots
    points = _measure_variances(task, probes, done, device)
    # looked up through the package so that a caller (or a test) can replace the writer
    from pyro_discrete import cli

    cli._write_report(
        out, s, done, probes.results, summaries, timings, points, time.perf_counter() - t_start
    )
    return out / "report.md"


def compare_settings(args: argparse.Namespace, estimators: Sequence[str]) -> CompareSettings:
    """:class:`CompareSettings` from the parsed options; :raises CLIError: on bad values."""
    reference = args.reference or ("rebar" if "rebar" in estimators else estimators[0])
    if reference not in estimators:
        raise CLIError(
            f"--reference {reference} is not among --estimators ({', '.join(estimators)})"
        )
    check_model_name(args.model)
    if args.steps < 1 or args.batch_size < 1:
        raise CLIError("--steps and --batch-size must be positive")
    if args.variance_samples < 2:
        raise CLIError("--variance-samples must be at least 2")
    return CompareSettings(
        model=args.model,
        estimators=list(estimators),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        cv_lr_factor=args.cv_lr_factor,
        seed=args.seed,
        data=args.data or "mnist",
        binarization=args.binarization,
        device=args.device,
        reference=reference,
        variance_points=args.variance_points,
        variance_samples=args.variance_samples,
        eval_points=args.eval_points,
        eval_examples=args.eval_examples,
        iw_samples=args.iw_samples,
        time_budget=args.time_budget,
    )


def _publish(tmp: Path, out: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 is for the unfinished state only
    if out.exists():
        trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, trash / "old")
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


def compare_into(out: Path, overwrite: bool, settings: CompareSettings, progress: bool) -> Path:
    """:func:`run_compare` into a hidden sibling of ``out``, renamed into place when whole.

    An interrupted or failed comparison leaves no directory that looks like a finished report.
    """
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a directory; choose another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CLIError(
            f"{out} already exists and is not empty; pass --overwrite to replace "
            "it or choose another --out"
        )
    make_device(settings.device)
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as locks:
        # one comparison per --out at a time, and never over a run directory in use
        locks.enter_context(RunLock(out.parent, "pyro-discrete compare", f".{out.name}.lock"))
        if out.is_dir():
            locks.enter_context(RunLock(out, "pyro-discrete compare --overwrite"))
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
        try:
            run_compare(settings, tmp, progress=progress)
            _publish(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out / "report.md"


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare ``--estimators`` and write the report into ``--out``."""
    settings = compare_settings(args, estimator_list(args.estimators))
    report = compare_into(Path(args.out), args.overwrite, settings, not args.no_progress)
    print(f"report written to {report}")
    return 0
