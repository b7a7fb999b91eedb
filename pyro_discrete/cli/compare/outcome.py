"""What a comparison measured: the rows and summaries the report is written from."""

from __future__ import annotations

from dataclasses import dataclass, field

from .budget import Costs
from .settings import CompareSettings
from .stats import LoadMonitor

__all__ = ["Outcome"]


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
    #: the optional measurements made smaller to fit ``--time-budget``, e.g.
    #: ``"--variance-samples 100 -> 25"`` (see :func:`~.plan.plan_comparison`)
    sized_to_budget: list[str] = field(default_factory=list)

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


