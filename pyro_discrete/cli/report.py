"""The report of ``pyro-discrete compare``: ``results.csv``, ``report.md`` and PNG plots.

``results`` is a list of rows ``{"estimator", "metric", "step", "wall_time_s", "value"}``;
every figure in the report is computed from these rows, which ``results.csv`` holds raw.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pyro_discrete._io import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from .compare import CompareSettings

__all__ = ["write_report"]

_COLUMNS = ["estimator", "metric", "step", "wall_time_s", "value"]


def _series(results: list[dict], name: str, metric: str, x: str = "step"):
    rows = sorted(
        (r for r in results if r["estimator"] == name and r["metric"] == metric),
        key=lambda r: r["step"],
    )
    return [r[x] for r in rows], [r["value"] for r in rows]


def _final(results: list[dict], name: str, metric: str) -> float:
    _, ys = _series(results, name, metric)
    return ys[-1] if ys else math.nan


def _best(results: list[dict], name: str) -> float:
    _, ys = _series(results, name, "eval_elbo")
    return max(ys) if ys else math.nan


def _mean_log_variance(results: list[dict], name: str) -> float:
    _, ys = _series(results, name, "grad_log_variance")
    return sum(ys) / len(ys) if ys else math.nan


def _write_results_csv(path: Path, results: list[dict]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, _COLUMNS)
    writer.writeheader()
    for r in results:
        writer.writerow(
            {**r, "wall_time_s": f"{r['wall_time_s']:.3f}", "value": f"{r['value']:.6g}"}
        )
    atomic_write_text(path, text.getvalue())


def _plot(
    path: Path,
    results: list[dict],
    estimators: list[str],
    metric: str,
    x: str,
    labels: tuple[str, str, str],
) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name in estimators:
        xs, ys = _series(results, name, metric, x)
        ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, ms=3, label=name)
    xlabel, ylabel, title = labels
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)


def _write_plots(out: Path, s: CompareSettings, results: list[dict]) -> None:
    _plot(
        out / "elbo_vs_steps.png",
        results,
        s.estimators,
        "eval_elbo",
        "step",
        (
            "training step",
            f"ELBO per example (nats, {s.eval_examples} training examples)",
            f"{s.model}: training ELBO",
        ),
    )
    _plot(
        out / "elbo_vs_time.png",
        results,
        s.estimators,
        "eval_elbo",
        "wall_time_s",
        ("training wall-clock (s)", "ELBO per example (nats)", f"{s.model}: training ELBO vs time"),
    )
    _plot(
        out / "grad_variance.png",
        results,
        s.estimators,
        "grad_log_variance",
        "step",
        (
            f"step of the {s.reference} run",
            "log mean variance of the gradient",
            f"{s.model}: gradient variance of the encoder",
        ),
    )


def _data_description(s: CompareSettings) -> str:
    if s.model == "mixture_of_experts":
        return "synthetic mixture-of-experts data"
    pretty = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}[s.data]
    return f"{s.binarization}ally binarised {pretty}"


def _summary_table(s: CompareSettings, results: list[dict], summaries: dict) -> list[str]:
    iw = f" valid IW bound (K={s.iw_samples}) |" if s.iw_samples else ""
    lines = [
        "| estimator | ms / step | steps / s | first step (s) | final ELBO | best ELBO "
        "| mean log-variance |" + iw,
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if s.iw_samples else ""),
    ]
    for name in s.estimators:
        ms = summaries[name]["ms_per_step"]
        row = (
            f"| {name} | {ms:.1f} | {1000 / ms:.1f} | {summaries[name]['first_step_s']:.2f} "
            f"| {_final(results, name, 'eval_elbo'):.2f} | {_best(results, name):.2f} "
            f"| {_mean_log_variance(results, name):.2f} |"
        )
        if s.iw_samples:
            row += f" {summaries[name]['valid_iw_bound']:.2f} |"
        lines.append(row)
    return lines


def _variance_table(s: CompareSettings, results: list[dict], var_steps: list[int]) -> list[str]:
    lines = ["| step | " + " | ".join(s.estimators) + " |", "|---:|" + "---:|" * len(s.estimators)]
    for point in var_steps:
        cells = []
        for name in s.estimators:
            vals = [
                r["value"]
                for r in results
                if r["estimator"] == name
                and r["metric"] == "grad_log_variance"
                and r["step"] == point
            ]
            cells.append(f"{vals[0]:.2f}" if vals else "")
        lines.append(f"| {point} | " + " | ".join(cells) + " |")
    return lines


def _report_markdown(
    s: CompareSettings,
    steps: int,
    results: list[dict],
    summaries: dict,
    timings: dict | None,
    var_steps: list[int],
    total_time: float,
) -> str:
    ranking = sorted(s.estimators, key=lambda name: _mean_log_variance(results, name))
    lines = [
        f"# Gradient estimators compared: `{s.model}` on {_data_description(s)}",
        "",
        f"Every estimator trained for **{steps} steps** (batch {s.batch_size}, Adam lr "
        f"{s.lr:g}, β₂ = 0.99999, control variates at {s.cv_lr_factor:g}× that rate) from the "
        f"same initialisation (seed {s.seed}) on the same sequence of minibatches, device "
        f"`{s.device}`, {torch.get_num_threads()} CPU thread(s). Total time "
        f"{total_time:.0f}s.",
        "",
        *_summary_table(s, results, summaries),
        "",
        "ms / step excludes the first step, where estimators build caches and networks. "
        "ELBO: single-sample estimate per example on the first "
        f"{s.eval_examples} training examples, averaged (higher is better). Variance: "
        "log of the mean over the encoder's parameter components of the variance of the "
        "gradient estimate (lower is better), averaged over the measurement points. "
        f"Ordered by gradient variance, lowest first: {', '.join(ranking)}.",
        "",
        "## Training ELBO against steps",
        "",
        "![ELBO vs steps](elbo_vs_steps.png)",
        "",
        "## Training ELBO against wall-clock time",
        "",
        "Time spent on the ELBO evaluations is excluded.",
        "",
        "![ELBO vs time](elbo_vs_time.png)",
        "",
        "## Gradient variance at shared parameter values",
        "",
        f"As in the REBAR paper: at steps {', '.join(map(str, var_steps))} of the "
        f"`{s.reference}` run, every estimator's gradient for the encoder (inference network) "
        f"parameters was drawn {s.variance_samples} times on one fixed minibatch, at those same "
        "model parameters. Each estimator's own control-variate state (baselines, running "
        "statistics, η, λ, surrogate networks) is taken from its own run at the same step. "
        "NVIL trains with its variance normalisation (the signal divided by a running standard "
        "deviation, which rescales the gradient); its variance here is that of the "
        "unnormalised, unbiased estimate.",
        "",
        "![gradient variance](grad_variance.png)",
        "",
        *_variance_table(s, results, var_steps),
    ]
    if timings:
        lines += [
            "",
            "Calibration (ms per step, before training): "
            + ", ".join(f"{n} {1000 * t:.1f}" for n, t in timings.items())
            + ".",
        ]
    lines += [
        "",
        "Raw figures: [results.csv](results.csv) (columns estimator, metric, step, "
        "wall_time_s, value).",
        "",
    ]
    return "\n".join(lines)


def write_report(
    out: Path,
    s: CompareSettings,
    steps: int,
    results: list[dict],
    summaries: dict,
    timings: dict | None,
    var_steps: list[int],
    total_time: float,
) -> None:
    """Write ``results.csv``, the three plots and ``report.md`` into ``out``."""
    _write_results_csv(out / "results.csv", results)
    _write_plots(out, s, results)
    atomic_write_text(
        out / "report.md",
        _report_markdown(s, steps, results, summaries, timings, var_steps, total_time),
    )
