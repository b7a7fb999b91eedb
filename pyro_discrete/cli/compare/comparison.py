"""The runs of one comparison, taking turns: training rounds, the measurements along them and
the budget's checks between rounds."""

from __future__ import annotations

import collections
import copy
import math
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
from .schedule import PLANNED_FRACTION, Schedule
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
        record_evaluations(self.outcome, task, self.inits, self.variance_batches, device)
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
            seed = self.s.run_seed(i) + EVAL_SEED_OFFSET + run.step
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
        return self.clock.budget * PLANNED_FRACTION - self.outcome.exit_reserve

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
                        run.model, valid, s.iw_samples, s.run_seed(i) + EVAL_SEED_OFFSET
                    )
                summary["valid_iw_bound"] = bound
                record(name, i, f"valid_iw_bound_k{s.iw_samples}", run.step, run.train_time, bound)
            self.outcome.runs[(name, i)] = summary
            slot.park()
        pyro.clear_param_store()


