r"""The rounds of ``pyro-discrete compare``: where runs meet, evaluate and measure variance.

All runs (every estimator, every seed) take turns in *rounds*; a round ends at a
*boundary*, a number of steps (``--equal steps``) or of seconds of training per run
(``--equal time``), which every run reaches before the next round starts. The ELBO is
evaluated at ``--eval-points`` boundaries and gradient variances measured at
``--variance-points`` boundaries, evenly spaced over the planned total
:math:`N`: at :math:`\lceil N (j + 1) / E \rfloor` for :math:`j = 0, \ldots, E - 1`; between them
rounds are short (about 1/40 of the total, at most 50 steps), so that machine load hits all
runs alike and a budget stops training close to its plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import CLIError

__all__ = ["PLANNED_FRACTION", "Schedule", "plan_training", "rounds_for"]

#: the fewest steps per run that a budget must afford for a comparison to mean anything
MIN_STEPS = 10


def _fractions(rounds: int, eval_points: int, variance_points: int):
    grid = {k / rounds for k in range(1, rounds + 1)}
    evals = {(j + 1) / eval_points for j in range(eval_points)}
    variances = {(j + 1) / variance_points for j in range(variance_points)}
    return sorted(grid | evals | variances), evals, variances


@dataclass
class Schedule:
    """Boundaries (``targets``) and which of them evaluate (``evals``) or measure variance.

    ``mode`` is ``"steps"`` (targets are step counts) or ``"time"`` (seconds of training).
    """

    mode: str
    total: float
    rounds: int
    eval_points: int
    variance_points: int
    targets: list[float] = field(default_factory=list)
    evals: set[int] = field(default_factory=set)
    variances: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.targets:
            self.extend_from(0.0)

    def _at(self, fraction: float) -> float:
        if self.mode == "steps":
            return max(1, round(self.total * fraction))
        return self.total * fraction

    def extend_from(self, reached: float) -> None:
        """(Re)build the boundaries after ``reached`` for the current :attr:`total`."""
        fractions, evals, variances = _fractions(
            self.rounds, self.eval_points, self.variance_points
        )
        for f in fractions:
            target = self._at(f)
            if target <= reached or (self.targets and target <= self.targets[-1]):
                continue
            self.targets.append(target)
            index = len(self.targets) - 1
            if f in evals:
                self.evals.add(index)
            if f in variances:
                self.variances.add(index)

    def replan(self, index: int, total: float) -> None:
        """Keep the boundaries up to ``index`` (reached) and plan the rest for ``total``."""
        reached = self.targets[index]
        self.targets = self.targets[: index + 1]
        self.evals = {i for i in self.evals if i <= index}
        self.variances = {i for i in self.variances if i <= index}
        self.total = total
        self.extend_from(reached)


def rounds_for(mode: str, total: float, slowest_step: float | None) -> int:
    """About 40 rounds, at most 50 steps each, and at least 5 steps of the slowest run."""
    if mode == "steps":
        return int(max(1, min(total, max(40, math.ceil(total / 50)))))
    return int(max(1, min(40, total / (5 * slowest_step))))


def plan_training(
    mode: str,
    window: float,
    step_costs: list[float],
    steps_cap: int,
    breakdown: str,
) -> float:
    """Steps per run (``"steps"``) or seconds per run (``"time"``) that fit in ``window``.

    ``step_costs`` holds one steady step of every run (all estimators, all seeds).

    :raises CLIError: when fewer than :data:`MIN_STEPS` steps per run fit; ``breakdown``
        says where the rest of the budget goes.
    """
    if mode == "steps":
        total = min(steps_cap, math.floor(max(window, 0.0) / sum(step_costs)))
        affordable = total
    else:
        total = max(window, 0.0) / len(step_costs)
        affordable = math.floor(total / max(step_costs))
    if affordable < MIN_STEPS:
        raise CLIError(
            f"--time-budget leaves {max(window, 0.0):.1f}s for training ({breakdown}): "
            f"{max(affordable, 0)} steps per run where at least {MIN_STEPS} are needed; raise "
            "--time-budget, or lower --seeds, --variance-samples, --eval-examples or "
            "--iw-samples, or drop estimators"
        )
    return total


#: the planned end of a budgeted comparison, as a fraction of the budget: what the
#: estimates of the last evaluations and the report may be off by without overrunning
PLANNED_FRACTION = 0.99
