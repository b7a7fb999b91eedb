"""The report's account of time: where the budget went, phase by phase, and how steady the
step times were (so that a reader knows how far the timings can be trusted)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .budget import PHASES, BudgetClock

if TYPE_CHECKING:
    from .outcome import Outcome

__all__ = ["accounting", "timing"]

#: step times whose 10-90% range exceeds this multiple of the median are called spread out
SPREAD = 1.0
#: the calibration and the run disagree when their median step times differ by more than this
DISAGREE = 0.25


def accounting(outcome: Outcome, clock: BudgetClock, total: float) -> list[str]:
    s = outcome.settings
    lines = [
        "## How the time was spent",
        "",
        "| phase | planned (s) | actual (s) | % of actual |",
        "|---|---:|---:|---:|",
    ]
    for phase in PHASES:
        planned = clock.planned.get(phase)
        cell = f"{planned:.1f}" if planned is not None else "–"
        spent = clock.spent[phase]
        lines.append(f"| {phase} | {cell} | {spent:.1f} | {100 * spent / total:.1f}% |")
    if "interpreter exit" in clock.planned:
        lines.append(
            f"| interpreter exit (after this report) | {clock.planned['interpreter exit']:.1f} "
            "| not measured | – |"
        )
    other = clock.other(total)
    lines.append(
        f"| other (switching runs, bookkeeping) | – | {other:.1f} | {100 * other / total:.1f}% |"
    )
    planned_total = f"{outcome.planned_total:.1f}" if outcome.planned_total is not None else "–"
    lines.append(f"| **total** | {planned_total} | {total:.1f} | 100% |")
    lines.append("")
    if s.time_budget is not None:
        exit_s = outcome.exit_reserve
        whole = total + exit_s
        verdict = (
            "within 5% of it"
            if abs(whole - s.time_budget) <= 0.05 * s.time_budget
            else f"{100 * (whole / s.time_budget - 1):+.0f}% off it"
        )
        stop = {
            "budget": "the budget check stopped training before the plan's end",
            "steps": "training ran to the plan's end",
            "--steps": f"training ended at --steps {s.steps}, before the budget was needed (the "
            "budget is an upper bound; raise --steps to use all of it)",
        }[outcome.stopped_by]
        lines.append(
            f"Budget {s.time_budget:.1f}s, measured from the command's start (interpreter "
            f"start-up included); actual total {total:.1f}s to the report"
            + (f", {whole:.1f}s with the estimated exit" if exit_s else "")
            + f", {verdict}; {stop}. The planned "
            "total includes a 1% reserve for estimation errors; the actual total ends when the "
            "plots are written, before the interpreter exits."
        )
        if outcome.sized_to_budget:
            lines.append("")
            lines.append(
                "To leave time for training, the optional measurements were made smaller "
                f"than asked: {', '.join(outcome.sized_to_budget)}."
            )
    else:
        lines.append(f"No --time-budget: total {total:.1f}s from the command's start.")
    lines.append(
        "Start-up: interpreter, imports, data and the runs' models; evaluations: ELBO curves "
        "and IW bounds; report: results.csv and the plots (writing report.md itself, a few "
        "milliseconds, comes after this account)."
    )
    return lines


def timing(outcome: Outcome) -> list[str]:
    s, costs, load = outcome.settings, outcome.costs, outcome.load
    lines = ["## Timing", ""]
    lines.append(
        "| estimator | median ms / step | interquartile range | 10–90% range | calibration |"
    )
    lines.append("|---|---:|---:|---:|---:|")
    spread, disagree = [], []
    for name in s.estimators:
        runs = [outcome.runs[(name, i)] for i in range(s.seeds)]
        median = sorted(r["ms_per_step"] for r in runs)[len(runs) // 2]
        p25 = min(r["ms_p25"] for r in runs)
        p75 = max(r["ms_p75"] for r in runs)
        p10 = min(r["ms_p10"] for r in runs)
        p90 = max(r["ms_p90"] for r in runs)
        calibrated = "–"
        if costs is not None:
            c = 1000 * costs.step[name]
            calibrated = f"{c:.1f}"
            if abs(median - c) > DISAGREE * c:
                disagree.append(f"{name} ({c:.1f} ms calibrated, {median:.1f} ms in the run)")
        if p90 - p10 > SPREAD * median:
            spread.append(name)
        lines.append(
            f"| {name} | {median:.1f} | {p25:.1f}–{p75:.1f} | {p10:.1f}–{p90:.1f} | {calibrated} |"
        )
    lines.append("")
    words = [
        f"Load average over the run {load.mean:.1f} on {load.cores} usable core(s)"
        if not math.isnan(load.mean)
        else "No load average on this system"
    ]
    if load.overloaded():
        words.append(
            "**the machine was loaded** (more runnable processes than cores): step times "
            "include waiting for a core, so they overstate what each estimator costs and "
            "differ between estimators more than their work does"
        )
    if spread:
        words.append(
            f"step times are spread out for {', '.join(spread)} (10–90% range wider than the "
            "median): other processes or the estimator's own variable work"
        )
    if disagree:
        words.append(
            "the calibration before training and the run disagree by more than "
            f"{100 * DISAGREE:.0f}% for {', '.join(disagree)}: the load changed during the run"
        )
    if not (load.overloaded() or spread or disagree):
        words.append("step times are consistent: no sign of a loaded machine")
    lines.append("; ".join(words) + ".")
    return lines
