"""``pyro-discrete compare``: train several estimators from the same starts, taking turns.

For every seed :math:`i` of ``--seeds N`` (``--seed``, ``--seed + 1``, ...), every estimator
starts from the same initialisation and sees the same minibatches; different seeds give
independent initialisations and data orders, so that the spread over seeds says how much of
a difference between estimators is noise. All runs take turns in short rounds
(:mod:`~pyro_discrete.cli.schedule`), so that changes in machine load affect them alike;
each run keeps its own param store and RNG stream between turns (a :class:`_Slot`), so the
result does not depend on the interleaving.

``--equal steps`` (the default) gives every run the same number of steps; ``--equal time``
the same training wall time (the number of steps then differs). At the evaluation
boundaries the ELBO is evaluated on fixed data (on its own RNG stream, off the training
clock), and at the variance boundaries every estimator's gradient variance is measured at
the reference run's parameters of the same seed, with its own control-variate state (REBAR
paper, Tucker et al. 2017, Fig. 2). ``--time-budget`` is planned and kept as
:mod:`~pyro_discrete.cli.budget` describes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch

from pyro_discrete.infer import ESTIMATORS

from . import report
from .budget import BudgetClock, Costs, calibrate
from .compiling import StepChoice, choose_step
from .errors import CLIError
from .lock import RunLock
from .measure import (
    control_variate_state,
    elbo_on_fixed_data,
    evaluation_data,
    iw_bound,
    variance_at,
)
from .options import CompareOptions
from .schedule import Schedule, plan_training, rounds_for
from .stats import LoadMonitor, quantile
from .tasks import Task, data_for, make_device, make_task
from .training import RunState, advance, new_run, progress_bar

__all__ = [
    "CompareSettings",
    "Outcome",
    "run_compare",
    "cmd_compare",
    "compare_settings",
    "compare_into",
]

#: the planned end of a budgeted comparison, as a fraction of the budget: what the
#: estimates of the last evaluations and the report may be off by without overrunning
_PLANNED_FRACTION = 0.99
_EVAL_SEED_OFFSET = 12345


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
    #: independent initialisations and data orders per estimator
    seeds: int = 1
    #: ``"steps"``: the same number of steps for every run; ``"time"``: the same training time
    equal: str = "steps"
    #: ``--compile`` and ``--compile-backend`` (:func:`~.compiling.choose_step`)
    compile: str = "auto"
    compile_backend: str = "auto"

    def run_seed(self, index: int) -> int:
        """The seed of the ``index``-th initialisation and data order."""
        return self.seed + index


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
class Outcome:
    """Everything the report is written from.

    ``results``: rows ``{"estimator", "seed", "metric", "step", "wall_time_s", "value"}``;
    ``runs``: per ``(estimator, seed index)``, the run's summary (steps, training time,
    step-time quantiles, IW bound); ``stopped_by``: ``"steps"`` (the plan was reached),
    ``"--steps"`` (``--steps`` was reached before the budget needed it) or ``"budget"`` (the
    budget's check stopped training before the plan).
    """

    settings: CompareSettings
    results: list[dict] = field(default_factory=list)
    runs: dict[tuple[str, int], dict] = field(default_factory=dict)
    costs: Costs | None = None
    planned_total: float | None = None
    #: seconds kept free at the end for the interpreter to exit (run as a command)
    exit_reserve: float = 0.0
    #: the plan's steps (``--equal steps``) or seconds of training (``--equal time``) per run
    schedule_total: float = 0.0
    stopped_by: str = "steps"
    load: LoadMonitor = field(default_factory=LoadMonitor)
    #: how every run took its steps, e.g. ``"compiled: trace backend"``
    step_kind: str = ""

    def record(
        self, estimator: str, seed: int, metric: str, step: int, wall: float, value: float
    ) -> None:
        self.results.append(
            {
                "estimator": estimator,
                "seed": seed,
                "metric": metric,
                "step": step,
                "wall_time_s": wall,
                "value": value,
            }
        )


class _Comparison:
    """The runs of one comparison, what is measured along them, and the budget's account."""

    def __init__(
        self, s: CompareSettings, task: Task, device: torch.device, clock: BudgetClock
    ) -> None:
        self.s, self.task, self.device, self.clock = s, task, device, clock
        self.step_choice: StepChoice = choose_step(s.compile, s.compile_backend, device)
        self.outcome = Outcome(s, step_kind=self.step_choice.description)
        self.eval_args = evaluation_data(task, s.eval_examples, s.seed, device)
        self.inits, self.variance_batches = [], []
        for i in range(s.seeds):
            seed = s.run_seed(i)
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            self.inits.append(copy.deepcopy(task.build_model().state_dict()))
            loader = task.loader(s.batch_size, seed + 1, device)
            self.variance_batches.append(task.args(loader.next_batch()))
        self.slots: dict[tuple[str, int], _Slot] = {}
        # measured costs: (seconds, schedule units) of the recent rounds, the last measurements
        self.recent_rounds: collections.deque = collections.deque(maxlen=10)
        self.eval_cost: float | None = None
        self.variance_cost: float | None = None

    # -- the runs ------------------------------------------------------------------

    def start_runs(self) -> None:
        """A run per seed and estimator, seed-major, each evaluated at step 0."""
        s = self.s
        for i in range(s.seeds):
            for name in s.estimators:
                run = new_run(
                    self.task,
                    name,
                    s.lr,
                    s.cv_lr_factor,
                    s.batch_size,
                    s.run_seed(i),
                    self.device,
                    self.inits[i],
                    self.step_choice,
                )
                self.slots[(name, i)] = _Slot(run)

    def _advance(self, slot: _Slot, mode: str, target: float) -> None:
        run = slot.resume()
        if mode == "steps":
            advance(run, int(target), on_step=None)
        elif run.train_time < target:
            advance(run, sys.maxsize, on_step=None, stop=lambda: run.train_time >= target)
        slot.park()

    # -- measurements --------------------------------------------------------------

    def evaluate(self) -> None:
        """Every run's ELBO on the fixed evaluation data, at its current step."""
        t0 = time.perf_counter()
        for (name, i), slot in self.slots.items():
            run = slot.resume()
            seed = self.s.run_seed(i) + _EVAL_SEED_OFFSET + run.step
            value = elbo_on_fixed_data(run, self.eval_args, seed)
            self.outcome.record(name, i, "eval_elbo", run.step, run.train_time, value)
            slot.park()
        self.eval_cost = time.perf_counter() - t0

    def measure_variance(self) -> None:
        """Every estimator's gradient variance at each seed's reference-run parameters."""
        t0 = time.perf_counter()
        s = self.s
        for i in range(s.seeds):
            reference = self.slots[(s.reference, i)].resume()
            state = copy.deepcopy(reference.model.state_dict())
            step, wall = reference.step, reference.train_time
            self.slots[(s.reference, i)].park()
            cv_states = {}
            for name in s.estimators:  # each estimator's own control-variate state, now
                self.slots[(name, i)].resume()
                cv_states[name] = control_variate_state()
                self.slots[(name, i)].park()
            for name in s.estimators:
                value = variance_at(
                    self.task,
                    name,
                    state,
                    cv_states[name],
                    self.variance_batches[i],
                    s.variance_samples,
                    s.run_seed(i) + step,
                    self.device,
                )
                self.outcome.record(name, i, "grad_log_variance", step, wall, value)
        self.variance_cost = time.perf_counter() - t0

    # -- the budget ----------------------------------------------------------------

    def _estimate(self, measured: float | None, calibrated: float) -> float:
        return calibrated if measured is None else measured

    def measurement_costs(self) -> tuple[float, float]:
        """Seconds of one evaluation boundary and of one variance boundary: as last measured,
        else as calibrated."""
        costs, s = self.outcome.costs, self.s
        return (
            self._estimate(self.eval_cost, len(self.slots) * costs.evaluation),
            self._estimate(
                self.variance_cost,
                s.seeds * costs.variance_point(s.estimators, s.variance_samples),
            ),
        )

    def after_training_cost(self) -> float:
        """Seconds of the last evaluation, variance point, IW bounds and report."""
        costs = self.outcome.costs
        return sum(self.measurement_costs()) + len(self.slots) * costs.iw_bound + costs.report

    @property
    def round_rate(self) -> float | None:
        """Seconds per unit of the schedule (a step of every run, or a second of each run's
        training), over the recent rounds: the current load, not the calibration's."""
        if not self.recent_rounds:
            return None
        return sum(w for w, _ in self.recent_rounds) / sum(u for _, u in self.recent_rounds)

    def end(self) -> float:
        """When (seconds after the start) the report should be written."""
        return self.clock.budget * _PLANNED_FRACTION - self.outcome.exit_reserve

    def round_cost(self, schedule: Schedule, index: int) -> float:
        previous = schedule.targets[index - 1] if index else 0.0
        step = schedule.targets[index] - previous
        if self.round_rate is not None:
            return self.round_rate * step
        costs = self.outcome.costs
        first = sum(costs.first_steps.values()) * self.s.seeds
        if schedule.mode == "steps":
            return first + step * self.s.seeds * sum(costs.step.values())
        return first + step * len(self.slots)

    def round_fits(self, schedule: Schedule, index: int) -> bool:
        """Whether the round to boundary ``index``, and everything after it, fit the budget."""
        if self.clock.budget is None or index == 0:
            return True
        end = self.end()
        upcoming = self.round_cost(schedule, index)
        # after the round: its boundary's evaluation and variance point (scheduled there, or
        # the final ones if training stops there), the IW bounds and the report
        return self.clock.now() + upcoming + self.after_training_cost() <= end

    def replan(self, schedule: Schedule, index: int) -> None:
        """After every round: the total that the recent rounds' rate affords in what is left.

        Boundaries already reached stay; the rest are spread over the new total.
        """
        s, costs = self.s, self.outcome.costs
        reached = schedule.targets[index]
        left_fraction = 1 - reached / schedule.total
        runs = len(self.slots)
        eval_cost, variance_cost = self.measurement_costs()
        measurements = (
            math.ceil(s.eval_points * left_fraction) * eval_cost
            + math.ceil(s.variance_points * left_fraction) * variance_cost
            + runs * costs.iw_bound
            + costs.report
        )
        window = self.end() - self.clock.now() - measurements
        total = max(reached, reached + window / self.round_rate)
        if schedule.mode == "steps":
            total = min(s.steps, math.floor(total))
        # shrinking at once keeps the end on time (the last round becomes a partial one);
        # growing waits for 1%, so that the measurement points do not move for noise
        if total < schedule.total or total > 1.01 * schedule.total:
            schedule.replan(index, total)

    # -- training ------------------------------------------------------------------

    def train(self, schedule: Schedule, progress: bool) -> int:
        """Rounds until the schedule ends or the budget says stop; the last boundary reached."""
        bar = progress_bar(len(schedule.targets), 0, "training rounds", progress)
        done, evaluated, measured = -1, True, True
        try:
            while done + 1 < len(schedule.targets):
                index = done + 1
                if not self.round_fits(schedule, index):
                    self.outcome.stopped_by = "budget"
                    break
                t0 = time.perf_counter()
                with self.clock.phase("training"):
                    for slot in self.slots.values():
                        self._advance(slot, schedule.mode, schedule.targets[index])
                previous = schedule.targets[index - 1] if index else 0.0
                if index:  # the first round holds the first steps (caches, networks)
                    units = schedule.targets[index] - previous
                    self.recent_rounds.append((time.perf_counter() - t0, units))
                done = index
                evaluated, measured = index in schedule.evals, index in schedule.variances
                if evaluated:
                    with self.clock.phase("evaluations"):
                        self.evaluate()
                if measured:
                    with self.clock.phase("gradient variance"):
                        self.measure_variance()
                self.outcome.load.sample()
                bar.total = len(schedule.targets)
                bar.update(1)
                if (
                    self.clock.budget is not None
                    and self.round_rate
                    and index < len(schedule.targets) - 1
                ):
                    self.replan(schedule, index)
        finally:
            bar.close()
        if not evaluated:  # the final figures are always measured at the last boundary
            with self.clock.phase("evaluations"):
                self.evaluate()
        if not measured:
            with self.clock.phase("gradient variance"):
                self.measure_variance()
        return done

    def finish(self) -> None:
        """Timing summaries and IW bounds of every run."""
        s = self.s
        valid = None
        if s.iw_samples:
            valid = self.task.args(self.task.split_rows("valid")[: s.eval_examples].to(self.device))
        for (name, i), slot in self.slots.items():
            run = slot.resume()
            # a compiled run's first three steps are eager, traced, first replay
            steady = run.step_times[run.step_choice.warmup_steps :] or run.step_times
            summary = {
                "steps": run.step,
                "train_time_s": run.train_time,
                "first_step_s": run.first_step_s or 0.0,
                "ms_per_step": 1000 * quantile(steady, 0.5),
                "ms_p10": 1000 * quantile(steady, 0.1),
                "ms_p25": 1000 * quantile(steady, 0.25),
                "ms_p75": 1000 * quantile(steady, 0.75),
                "ms_p90": 1000 * quantile(steady, 0.9),
            }
            record = self.outcome.record
            for row in run.history:
                record(
                    name,
                    i,
                    "train_elbo_ema",
                    row["step"],
                    row["wall_time_s"],
                    row["train_elbo_ema"],
                )
            for key in ("ms_per_step", "ms_p10", "ms_p90", "first_step_s", "steps"):
                record(name, i, key, run.step, run.train_time, summary[key])
            if valid is not None:
                with self.clock.phase("evaluations"):
                    bound = iw_bound(
                        run.model, valid, s.iw_samples, s.run_seed(i) + _EVAL_SEED_OFFSET
                    )
                summary["valid_iw_bound"] = bound
                record(name, i, f"valid_iw_bound_k{s.iw_samples}", run.step, run.train_time, bound)
            self.outcome.runs[(name, i)] = summary
            slot.park()
        pyro.clear_param_store()


def _schedule(cmp: _Comparison, as_process: bool) -> Schedule:
    """Plan the training: with a budget, calibrate and fit the plan into it."""
    s, clock = cmp.s, cmp.clock
    if s.time_budget is None:
        return Schedule(
            "steps", s.steps, rounds_for("steps", s.steps, None), s.eval_points, s.variance_points
        )
    with clock.phase("calibration"):
        costs = calibrate(cmp.task, s, cmp.device, cmp.inits[0], cmp.step_choice)
    cmp.outcome.costs = costs
    runs = s.seeds * len(s.estimators)
    planned = {
        "start-up": clock.spent["start-up"],
        "calibration": clock.spent["calibration"],
        "evaluations": (s.eval_points + 1) * runs * costs.evaluation + runs * costs.iw_bound,
        "gradient variance": s.variance_points
        * s.seeds
        * costs.variance_point(s.estimators, s.variance_samples),
        "report": costs.report,
    }
    first_steps = s.seeds * sum(costs.first_steps.values())
    if as_process:
        # the interpreter's exit (unloading torch and the rest) comes after the report; it
        # takes about 40% of the import time measured at the start (1-3 s on a loaded
        # 2-core machine): kept free so that the process, not only the report, ends in time
        cmp.outcome.exit_reserve = 0.4 * clock.spent["start-up"]
        planned["interpreter exit"] = cmp.outcome.exit_reserve
    end = s.time_budget * _PLANNED_FRACTION - cmp.outcome.exit_reserve
    after = ("evaluations", "gradient variance", "report")
    window = end - clock.now() - sum(planned[k] for k in after) - first_steps
    breakdown = ", ".join(f"{k} {v:.1f}s" for k, v in planned.items())
    step_costs = [costs.step[name] for _ in range(s.seeds) for name in s.estimators]
    total = plan_training(s.equal, window, step_costs, s.steps, breakdown)
    if s.equal == "steps" and total >= s.steps:
        cmp.outcome.stopped_by = "--steps"  # the budget affords more than asked for
    used = total * sum(step_costs) if s.equal == "steps" else total * runs
    planned["training"] = used + first_steps
    clock.planned = planned
    # with the reserve for estimation errors, the plan adds up to the budget
    cmp.outcome.planned_total = sum(planned.values()) + s.time_budget * (1 - _PLANNED_FRACTION)
    unit = "steps" if s.equal == "steps" else "s of training"
    print(
        f"time budget {s.time_budget:.0f}s: planning {total:.4g} {unit} per run "
        "(measured ms/step: "
        + ", ".join(f"{n} {1000 * t:.1f}" for n, t in costs.step.items())
        + ")",
        file=sys.stderr,
    )
    return Schedule(
        s.equal,
        total,
        rounds_for(s.equal, total, max(costs.step.values())),
        s.eval_points,
        s.variance_points,
    )


def run_compare(
    s: CompareSettings,
    out: Path,
    progress: bool = True,
    started: float | None = None,
    as_process: bool = False,
) -> Path:
    """Train every estimator from each seed's initialisation and write the report to ``out``.

    ``started``: when the command started (:func:`time.perf_counter`), the origin of
    ``--time-budget``; default now. ``as_process``: the command is the whole process, whose
    exit after the report is planned for.
    """
    clock = BudgetClock(time.perf_counter() if started is None else started, s.time_budget)
    clock.spent["start-up"] = clock.now()
    with clock.phase("start-up"):
        device = make_device(s.device)
        task = make_task(s.model, s.data, s.binarization, s.seed)
        cmp = _Comparison(s, task, device, clock)
    schedule = _schedule(cmp, as_process)
    with clock.phase("start-up"):
        cmp.start_runs()
    with clock.phase("evaluations"):
        cmp.evaluate()  # step 0: every curve starts at its initialisation
    print(f"compare: {cmp.step_choice.description}", file=sys.stderr)
    cmp.train(schedule, progress)
    cmp.finish()
    cmp.outcome.schedule_total = schedule.total
    report.write_report(out, cmp.outcome, clock)
    return out / "report.md"


def compare_settings(args: argparse.Namespace) -> CompareSettings:
    """:class:`CompareSettings` from the parsed options; :raises CLIError: on bad values."""
    estimators = estimator_list(args.estimators)
    reference = args.reference or ("rebar" if "rebar" in estimators else estimators[0])
    if reference not in estimators:
        raise CLIError(
            f"--reference {reference} is not among --estimators ({', '.join(estimators)})"
        )
    if args.equal == "time" and args.time_budget is None:
        raise CLIError(
            "--equal time needs --time-budget: the training time per run is what the budget "
            "leaves after calibration, evaluations and the report"
        )
    if args.equal == "time" and args.steps is not None:
        raise CLIError(
            "--steps has no effect with --equal time (every run trains for the same time); "
            "drop --steps, or use --equal steps"
        )
    steps = args.default_steps if args.steps is None else args.steps
    if steps < 1 or args.batch_size < 1:
        raise CLIError("--steps and --batch-size must be positive")
    if args.seeds < 1:
        raise CLIError("--seeds must be at least 1")
    if args.variance_samples < 2:
        raise CLIError("--variance-samples must be at least 2")
    return CompareSettings(
        model=args.model,
        estimators=list(estimators),
        steps=steps if args.equal == "steps" else sys.maxsize,
        batch_size=args.batch_size,
        lr=args.lr,
        cv_lr_factor=args.cv_lr_factor,
        seed=args.seed,
        data=data_for(args.model, args.data),
        binarization=args.binarization,
        device=args.device,
        reference=reference,
        variance_points=args.variance_points,
        variance_samples=args.variance_samples,
        eval_points=args.eval_points,
        eval_examples=args.eval_examples,
        iw_samples=args.iw_samples,
        time_budget=args.time_budget,
        seeds=args.seeds,
        equal=args.equal,
        compile=args.compile,
        compile_backend=args.compile_backend,
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


def compare_into(
    out: Path,
    overwrite: bool,
    settings: CompareSettings,
    progress: bool,
    started: float | None = None,
    as_process: bool = False,
) -> Path:
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
    choose_step(settings.compile, settings.compile_backend, make_device(settings.device))
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as locks:
        # one comparison per --out at a time, and never over a run directory in use
        locks.enter_context(RunLock(out.parent, "pyro-discrete compare", f".{out.name}.lock"))
        if out.is_dir():
            locks.enter_context(RunLock(out, "pyro-discrete compare --overwrite"))
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
        try:
            run_compare(settings, tmp, progress, started, as_process)
            _publish(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out / "report.md"


def cmd_compare(options: CompareOptions) -> int:
    """Compare ``--estimators`` and write the report into ``--out``."""
    written = compare_into(
        options.out,
        options.overwrite,
        options.settings,
        options.progress,
        options.started,
        options.as_process,
    )
    print(f"report written to {written}")
    return 0
