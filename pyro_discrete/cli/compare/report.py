"""The report of ``pyro-discrete compare``: ``results.csv``, ``report.md`` and PNG plots.

``results.csv`` holds every measurement raw, one row per run (``seed`` is the seed's index,
0 to ``--seeds`` - 1), then one row per estimator and summary figure with ``seed`` ``mean``:
the mean over seeds and its 95% t-interval (``ci95_low``, ``ci95_high``; empty with one
seed). Every figure of ``report.md`` is computed from these rows. Estimators are ranked only
where the intervals over seeds do not overlap (:mod:`~pyro_discrete.cli.compare.stats`); the report
says which differences are within noise.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pyro_discrete._io import atomic_write_text
from pyro_discrete.models import MODEL_SPECS

from ..tasks import describe_data
from .accounting import accounting, timing
from .budget import BudgetClock
from .plots import per_seed, write_plots
from .stats import Interval, interval, paired_difference

if TYPE_CHECKING:
    from .outcome import Outcome
    from .settings import CompareSettings

__all__ = ["COLUMNS", "seed_values", "write_report"]

COLUMNS = ["estimator", "seed", "metric", "step", "wall_time_s", "value", "ci95_low", "ci95_high"]


def seed_values(results: list[dict], name: str, figure: str) -> list[float]:
    """One value per seed: ``final_elbo``, ``best_elbo``, ``log_variance`` or a metric's last."""
    if figure == "final_elbo":
        runs = per_seed(results, name, "eval_elbo")
        return [rows[-1]["value"] for rows in runs.values()]
    if figure == "best_elbo":
        runs = per_seed(results, name, "eval_elbo")
        return [max(r["value"] for r in rows) for rows in runs.values()]
    if figure == "log_variance":
        runs = per_seed(results, name, "grad_log_variance")
        return [sum(r["value"] for r in rows) / len(rows) for rows in runs.values()]
    return [rows[-1]["value"] for rows in per_seed(results, name, figure).values()]


def _summary_figures(s: CompareSettings) -> list[str]:
    figures = ["final_elbo", "best_elbo", "log_variance", "steps", "ms_per_step"]
    figures.append("evaluations_per_step")
    return figures + ([f"valid_iw_bound_k{s.iw_samples}"] if s.iw_samples else [])


def _write_results_csv(path: Path, s: CompareSettings, results: list[dict]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, COLUMNS)
    writer.writeheader()
    for r in results:
        writer.writerow(
            {**r, "wall_time_s": f"{r['wall_time_s']:.3f}", "value": f"{r['value']:.6g}"}
        )
    for name in s.estimators:
        for figure in _summary_figures(s):
            stats = interval(seed_values(results, name, figure))
            two = stats.n >= 2
            writer.writerow(
                {
                    "estimator": name,
                    "seed": "mean",
                    "metric": figure,
                    "step": "",
                    "wall_time_s": "",
                    "value": f"{stats.mean:.6g}",
                    "ci95_low": f"{stats.low:.6g}" if two else "",
                    "ci95_high": f"{stats.high:.6g}" if two else "",
                }
            )
    atomic_write_text(path, text.getvalue())


def _data_description(s: CompareSettings) -> str:
    return describe_data(s.data, s.binarization)


def _steps_cell(outcome: Outcome, name: str) -> str:
    steps = [outcome.runs[(name, i)]["steps"] for i in range(outcome.settings.seeds)]
    if min(steps) == max(steps):
        return str(steps[0])
    return f"{sum(steps) / len(steps):.0f} ({min(steps)}–{max(steps)})"


def _evaluations_cell(outcome: Outcome, name: str) -> str:
    """Evaluations of the model per step and data point, and over the run (mean over seeds);
    "–" when they were not counted."""
    counts = seed_values(outcome.results, name, "evaluations_per_step")
    if not counts:
        return "–"
    per_step = counts[0]
    steps = [outcome.runs[(name, i)]["steps"] for i in range(outcome.settings.seeds)]
    total = per_step * sum(steps) / len(steps)
    return f"{per_step:g} ({total:,.0f})"


def _summary_table(outcome: Outcome) -> list[str]:
    s, results = outcome.settings, outcome.results
    iw = f" valid IW bound (K={s.iw_samples}) |" if s.iw_samples else ""
    lines = [
        "| estimator | steps | evaluations / step (total) | ms / step, median [10–90%] "
        "| first step (s) | final ELBO | best ELBO | mean log-variance |" + iw,
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if s.iw_samples else ""),
    ]
    for name in s.estimators:
        runs = [outcome.runs[(name, i)] for i in range(s.seeds)]
        median = interval([r["ms_per_step"] for r in runs]).mean
        p10 = min(r["ms_p10"] for r in runs)
        p90 = max(r["ms_p90"] for r in runs)
        first = interval([r["first_step_s"] for r in runs]).mean
        cells = [interval(seed_values(results, name, f)) for f in _summary_figures(s)[:3]]
        row = (
            f"| {name} | {_steps_cell(outcome, name)} | {_evaluations_cell(outcome, name)} "
            f"| {median:.1f} [{p10:.1f}–{p90:.1f}] "
            f"| {first:.2f} | " + " | ".join(c.format() for c in cells) + " |"
        )
        if s.iw_samples:
            bound = interval(seed_values(results, name, f"valid_iw_bound_k{s.iw_samples}"))
            row += f" {bound.format()} |"
        lines.append(row)
    return lines


def _comparisons(
    s: CompareSettings, results: list[dict], figure: str, what: str, higher_better: bool
) -> list[str]:
    """Sentences on which estimators ``figure`` ranks, and which differences are noise."""
    if s.seeds < 2:
        return [
            f"{what}: not ranked. A ranking needs --seeds >= 2: one seed gives no estimate of "
            "the noise (another initialisation or data order can reorder close estimators)."
        ]
    values = {name: seed_values(results, name, figure) for name in s.estimators}
    stats = {name: interval(v) for name, v in values.items()}
    order = sorted(s.estimators, key=lambda n: stats[n].mean, reverse=higher_better)
    better = "higher" if higher_better else "lower"
    lines = [f"{what} ({better} is better), over {s.seeds} seeds:"]
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            diff: Interval = paired_difference(values[a], values[b])
            paired = f"paired difference {diff.format()}"
            if not stats[a].overlaps(stats[b]):
                lines.append(f"- {a} is better than {b} ({paired}; the intervals do not overlap).")
            elif diff.excludes_zero():
                lines.append(
                    f"- {a} and {b}: not ranked, their intervals overlap; the paired test over "
                    f"the shared seeds favours {a} ({paired}), more seeds would settle it."
                )
            else:
                lines.append(f"- {a} and {b}: within noise ({paired}, which includes 0).")
    return lines


def _mode_sentence(outcome: Outcome) -> str:
    s = outcome.settings
    seeds = (
        f"from {s.seeds} independent initialisations and data orders (seeds {s.seed}–"
        f"{s.seed + s.seeds - 1}; for each seed, every estimator starts from the same "
        "initialisation and sees the same minibatches)"
        if s.seeds > 1
        else f"from the same initialisation (seed {s.seed}) on the same sequence of minibatches"
    )
    if s.equal == "time":
        equal = (
            f"**Equal time**: every run trained for the same wall time, "
            f"{outcome.schedule_total:.1f}s (planned; a run ends at the first step past it), so "
            "the number of steps differs between estimators (the steps column)."
        )
    else:
        equal = "**Equal steps**: every run trained for the same number of steps."
    return (
        f"{equal} Batch {s.batch_size}, Adam lr {s.lr:g}, β₂ = 0.99999, control variates at "
        f"{s.cv_lr_factor:g}× that rate, {seeds}; device `{s.device}`, "
        f"{torch.get_num_threads()} CPU thread(s); steps {outcome.step_kind or 'eager'}."
    )


def _report_markdown(outcome: Outcome, clock: BudgetClock, total: float) -> str:
    s, results = outcome.settings, outcome.results
    points = sorted({r["step"] for r in results if r["metric"] == "grad_log_variance"})
    band = f" Curves: mean over {s.seeds} seeds, bands: 95% t-interval." if s.seeds > 1 else ""
    interval_note = (
        f"Figures are means over {s.seeds} seeds ± the 95% t-interval of the mean."
        if s.seeds > 1
        else "One seed: no intervals (use --seeds 2 or more for them)."
    )
    lines = [
        f"# Gradient estimators compared: `{s.model}` ({MODEL_SPECS[s.model].report_name}) "
        f"on {_data_description(s)}",
        "",
        _mode_sentence(outcome),
        "",
        *_summary_table(outcome),
        "",
        f"{interval_note} Evaluations: passes of the model per data point in one training "
        "step, counted (a vectorised pass over K particles or changed values counts K), and "
        "over the whole run; an estimator `name:K` runs with K particles. ms / step: median "
        "of the steps after the first (where estimators "
        "build caches and networks), with the 10–90% range over all runs. ELBO: "
        f"single-sample estimate per example on the first {s.eval_examples} training examples "
        "(higher is better). Variance: log of the mean over the encoder's parameter components "
        "of the variance of the gradient estimate (lower is better), averaged over the "
        "measurement points.",
        "",
        "## Which estimator?",
        "",
        *_comparisons(s, results, "final_elbo", "Final ELBO", True),
        "",
        *_comparisons(s, results, "log_variance", "Gradient variance", False),
        "",
        "## Training ELBO against steps",
        "",
        f"![ELBO vs steps](elbo_vs_steps.png){band}",
        "",
        "## Training ELBO against wall-clock time",
        "",
        "Training time of each run only (evaluations, variance draws and the other runs' turns "
        "are excluded); every estimator on the same time axis.",
        "",
        "![ELBO vs time](elbo_vs_time.png)",
        "",
        "## Gradient variance at shared parameter values",
        "",
        f"As in the REBAR paper: at steps {', '.join(map(str, points))} of the "
        f"`{s.reference}` run (of each seed), every estimator's gradient for the encoder "
        f"(inference network) parameters was drawn {s.variance_samples} times on one fixed "
        "minibatch, at those same model parameters. Each estimator's own control-variate state "
        "(baselines, running statistics, η, λ, surrogate networks) is taken from its own run at "
        "the same boundary. NVIL trains with its variance normalisation (the signal divided by "
        "a running standard deviation, which rescales the gradient); its variance here is that "
        "of the unnormalised, unbiased estimate.",
        "",
        "![gradient variance](grad_variance.png)",
        "",
        *timing(outcome),
        "",
        *accounting(outcome, clock, total),
        "",
        "Raw figures: [results.csv](results.csv) (columns " + ", ".join(COLUMNS) + "; rows "
        "with seed `mean` hold the means over seeds and their 95% intervals).",
        "",
    ]
    return "\n".join(lines)


def write_report(out: Path, outcome: Outcome, clock: BudgetClock) -> None:
    """Write ``results.csv``, the three plots and ``report.md`` into ``out``.

    The time spent here counts as the budget's ``report`` phase; ``report.md``'s account
    ends just before ``report.md`` itself is written.
    """
    t0 = time.perf_counter()
    s = outcome.settings
    _write_results_csv(out / "results.csv", s, outcome.results)
    write_plots(out, s, outcome.results)
    clock.spent["report"] += time.perf_counter() - t0
    total = clock.now()
    atomic_write_text(out / "report.md", _report_markdown(outcome, clock, total))
