"""The runs of one comparison, taking turns: training rounds and the measurements along them;
the budget's checks between rounds are :class:`~.pacing.Pacing`'s."""

from __future__ import annotations

import copy
import sys
import time

import pyro
import torch

from ..compiling import StepChoice, choose_step
from ..progress import progress_bar
from ..tasks import Task
from ..training import RunState, advance, new_run
from .budget import BudgetClock
from .evaluations import record_evaluations
from .measure import (
    control_variate_state,
    elbo_on_fixed_data,
    evaluation_data,
    iw_bound,
    variance_at,
)
from .outcome import Outcome
from .pacing import Pacing
from .schedule import Schedule
from .settings import CompareSettings
from .stats import quantile

__all__ = ["EVAL_SEED_OFFSET", "Comparison"]

EVAL_SEED_OFFSET = 12345


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


class Comparison:
    """The runs of one comparison and what is measured along them."""

    def __init__(
        self, s: CompareSettings, task: Task, device: torch.device, clock: BudgetClock
    ) -> None:
        self.s, self.task, self.device, self.clock = s, task, device, clock
        self.step_choice: StepChoice = choose_step(
            s.compile, s.compile_backend, device, s.planned_steps, s.estimators
        )
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
        record_evaluations(self.outcome, task, self.inits, self.variance_batches, device)
        self.slots: dict[tuple[str, int], _Slot] = {}
        #: the budget's checks between rounds
        self.pacing = Pacing(clock, self.outcome)

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
            seed = self.s.run_seed(i) + EVAL_SEED_OFFSET + run.step
            value = elbo_on_fixed_data(run, self.eval_args, seed)
            self.outcome.record(name, i, "eval_elbo", run.step, run.train_time, value)
            slot.park()
        self.pacing.eval_cost = time.perf_counter() - t0

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
        self.pacing.variance_cost = time.perf_counter() - t0

    # -- training ------------------------------------------------------------------

    def train(self, schedule: Schedule, progress: bool) -> int:
        """Rounds until the schedule ends or the budget says stop; the last boundary reached."""
        bar = progress_bar(len(schedule.targets), 0, "training rounds", progress)
        done, evaluated, measured = -1, True, True
        try:
            while done + 1 < len(schedule.targets):
                index = done + 1
                if not self.pacing.round_fits(schedule, index):
                    self.outcome.stopped_by = "budget"
                    break
                t0 = time.perf_counter()
                with self.clock.phase("training"):
                    for slot in self.slots.values():
                        self._advance(slot, schedule.mode, schedule.targets[index])
                previous = schedule.targets[index - 1] if index else 0.0
                if index:  # the first round holds the first steps (caches, networks)
                    units = schedule.targets[index] - previous
                    self.pacing.record_round(time.perf_counter() - t0, units)
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
                    and self.pacing.round_rate
                    and index < len(schedule.targets) - 1
                ):
                    self.pacing.replan(schedule, index)
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
                        run.model, valid, s.iw_samples, s.run_seed(i) + EVAL_SEED_OFFSET
                    )
                summary["valid_iw_bound"] = bound
                record(name, i, f"valid_iw_bound_k{s.iw_samples}", run.step, run.train_time, bound)
            self.outcome.runs[(name, i)] = summary
            slot.park()
        pyro.clear_param_store()
