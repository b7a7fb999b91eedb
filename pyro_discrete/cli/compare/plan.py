"""The plan of a comparison under ``--time-budget``: calibrate, make the optional
measurements fit (:func:`_size_measurements`), and turn what is left into training rounds
(:mod:`~pyro_discrete.cli.compare.schedule`)."""

from __future__ import annotations

import sys
from dataclasses import replace

from ..errors import CLIError
from .budget import calibrate
from .comparison import Comparison
from .schedule import PLANNED_FRACTION, Schedule, plan_training, rounds_for

__all__ = ["MEASUREMENT_SHARE", "plan_comparison"]


#: the optional measurements (ELBO curves, IW bounds, gradient variances) may take at most
#: this share of what the budget leaves after calibration; beyond it they are made smaller
MEASUREMENT_SHARE = 0.5
#: how far each optional measurement may be made smaller, in the order it is shrunk
_SMALLEST = (("variance_samples", 10), ("eval_examples", 100), ("eval_points", 3),
             ("variance_points", 1))  # fmt: skip


def _measurement_cost(s, full, costs, runs: int) -> float:
    """Seconds of the measurements of settings ``s``; the calibration timed those of
    ``full`` (evaluations and IW bounds scale with the examples)."""
    examples = s.eval_examples / full.eval_examples
    evaluations = ((s.eval_points + 1) * runs * costs.evaluation + runs * costs.iw_bound) * examples
    variance = s.variance_points * s.seeds * costs.variance_point(s.estimators, s.variance_samples)
    return evaluations + variance


def _size_measurements(cmp: Comparison, costs, available: float):
    """Make the optional measurements smaller (fewer variance draws, evaluation examples,
    evaluation and variance points, in that order, each at most down to its floor) until
    they take at most :data:`MEASUREMENT_SHARE` of ``available`` seconds, so that a short
    budget trains instead of being refused; the comparison's settings are replaced and
    the outcome says what changed. Returns the settings."""
    full = cmp.s
    runs = full.seeds * len(full.estimators)
    sized = full
    share = MEASUREMENT_SHARE * max(available, 0.0)
    for name, smallest in _SMALLEST:
        while (
            _measurement_cost(sized, full, costs, runs) > share and getattr(sized, name) > smallest
        ):
            sized = replace(sized, **{name: max(smallest, getattr(sized, name) // 2)})
    changes = [
        f"--{name.replace('_', '-')} {getattr(full, name)} -> {getattr(sized, name)}"
        for name, _ in _SMALLEST
        if getattr(sized, name) != getattr(full, name)
    ]
    if changes:
        cmp.s = cmp.outcome.settings = sized
        cmp.eval_args = tuple(a[: sized.eval_examples] for a in cmp.eval_args)
        cmp.outcome.sized_to_budget = changes
        # an evaluation and an IW bound cost in proportion to their examples
        costs.evaluation *= sized.eval_examples / full.eval_examples
        costs.iw_bound *= sized.eval_examples / full.eval_examples
        print(
            f"time budget {full.time_budget:g}s: measurements made smaller to leave time for "
            f"training: {', '.join(changes)}",
            file=sys.stderr,
        )
    return sized


def plan_comparison(cmp: Comparison, as_process: bool) -> Schedule:
    """Plan the training: with a budget, calibrate and fit the plan into it."""
    s, clock = cmp.s, cmp.clock
    if s.time_budget is None:
        return Schedule(
            "steps", s.steps, rounds_for("steps", s.steps, None), s.eval_points, s.variance_points
        )
    if clock.now() >= s.time_budget * PLANNED_FRACTION:
        raise CLIError(
            f"--time-budget {s.time_budget:g}s is spent before the calibration: start-up alone "
            f"took {clock.now():.1f}s; raise --time-budget"
        )
    with clock.phase("calibration"):
        costs = calibrate(cmp.task, s, cmp.device, cmp.inits[0], cmp.step_choice)
    cmp.outcome.costs = costs
    runs = s.seeds * len(s.estimators)
    if as_process:
        cmp.outcome.exit_reserve = 0.4 * clock.spent["start-up"]
    available = (
        s.time_budget * PLANNED_FRACTION
        - cmp.outcome.exit_reserve
        - clock.now()
        - costs.report
        - s.seeds * sum(costs.first_steps.values())
    )
    s = _size_measurements(cmp, costs, available)
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
        planned["interpreter exit"] = cmp.outcome.exit_reserve
    end = s.time_budget * PLANNED_FRACTION - cmp.outcome.exit_reserve
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
    cmp.outcome.planned_total = sum(planned.values()) + s.time_budget * (1 - PLANNED_FRACTION)
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
