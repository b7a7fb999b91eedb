"""The budget's checks between the rounds of a comparison (``--time-budget``).

:mod:`~.plan` fits the schedule into the budget before training, from the calibration;
:class:`Pacing` keeps it there while training goes, from what the rounds and measurements
actually cost under the machine's current load: whether the next round still fits, and the
schedule's total replanned after every round.
"""

from __future__ import annotations

import collections
import math

from .budget import BudgetClock
from .outcome import Outcome
from .schedule import PLANNED_FRACTION, Schedule

__all__ = ["Pacing"]


class Pacing:
    """What the rounds and measurements of one comparison cost (as last measured, else as
    calibrated) and what the budget therefore affords.

    The settings are read from ``outcome.settings`` at every use: the plan may have sized
    the optional measurements down to the budget (:func:`~.plan.plan_comparison`).
    """

    def __init__(self, clock: BudgetClock, outcome: Outcome) -> None:
        self.clock, self.outcome = clock, outcome
        #: (seconds, schedule units) of the recent rounds
        self.recent_rounds: collections.deque = collections.deque(maxlen=10)
        #: seconds of the last evaluation and variance boundaries (``None``: none yet)
        self.eval_cost: float | None = None
        self.variance_cost: float | None = None

    @property
    def runs(self) -> int:
        s = self.outcome.settings
        return s.seeds * len(s.estimators)

    def record_round(self, seconds: float, units: float) -> None:
        self.recent_rounds.append((seconds, units))

    @staticmethod
    def _estimate(measured: float | None, calibrated: float) -> float:
        return calibrated if measured is None else measured

    def measurement_costs(self) -> tuple[float, float]:
        """Seconds of one evaluation boundary and of one variance boundary: as last measured,
        else as calibrated."""
        costs, s = self.outcome.costs, self.outcome.settings
        return (
            self._estimate(self.eval_cost, self.runs * costs.evaluation),
            self._estimate(
                self.variance_cost,
                s.seeds * costs.variance_point(s.estimators, s.variance_samples),
            ),
        )

    def after_training_cost(self) -> float:
        """Seconds of the last evaluation, variance point, IW bounds and report."""
        costs = self.outcome.costs
        return sum(self.measurement_costs()) + self.runs * costs.iw_bound + costs.report

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
        costs, s = self.outcome.costs, self.outcome.settings
        first = sum(costs.first_steps.values()) * s.seeds
        if schedule.mode == "steps":
            return first + step * s.seeds * sum(costs.step.values())
        return first + step * self.runs

    def round_fits(self, schedule: Schedule, index: int) -> bool:
        """Whether the round to boundary ``index``, and everything after it, fit the budget."""
        if self.clock.budget is None or index == 0:
            return True
        upcoming = self.round_cost(schedule, index)
        # after the round: its boundary's evaluation and variance point (scheduled there, or
        # the final ones if training stops there), the IW bounds and the report
        return self.clock.now() + upcoming + self.after_training_cost() <= self.end()

    def replan(self, schedule: Schedule, index: int) -> None:
        """After every round: the total that the recent rounds' rate affords in what is left.

        Boundaries already reached stay; the rest are spread over the new total.
        """
        s, costs = self.outcome.settings, self.outcome.costs
        reached = schedule.targets[index]
        left_fraction = 1 - reached / schedule.total
        eval_cost, variance_cost = self.measurement_costs()
        measurements = (
            math.ceil(s.eval_points * left_fraction) * eval_cost
            + math.ceil(s.variance_points * left_fraction) * variance_cost
            + self.runs * costs.iw_bound
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
