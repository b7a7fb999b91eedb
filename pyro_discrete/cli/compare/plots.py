"""The PNG plots of ``pyro-discrete compare``: curves as mean and 95% band over seeds.

Every run of an estimator (one per seed) is measured at the same boundaries of the schedule,
so its curves line up point by point; the plotted curve is the mean over seeds at each
point, the band its 95% t-interval (:func:`~pyro_discrete.cli.compare.stats.interval`), drawn only
with two or more seeds.
"""

from __future__ import annotations

import math
from pathlib import Path

from pyro_discrete._io import atomic_write

from .stats import Interval, interval

__all__ = ["aligned", "write_plots"]


def per_seed(results: list[dict], name: str, metric: str) -> dict[int, list[dict]]:
    """The rows of one estimator and metric, per seed, in step order."""
    runs: dict[int, list[dict]] = {}
    for r in results:
        if r["estimator"] == name and r["metric"] == metric:
            runs.setdefault(r["seed"], []).append(r)
    return {seed: sorted(rows, key=lambda r: r["step"]) for seed, rows in sorted(runs.items())}


def aligned(
    results: list[dict], name: str, metric: str, x: str = "step"
) -> tuple[list[float], list[Interval]]:
    """Point by point over seeds: the mean ``x`` and the interval of the values."""
    runs = list(per_seed(results, name, metric).values())
    if not runs:
        return [], []
    length = min(len(rows) for rows in runs)
    xs = [sum(rows[k][x] for rows in runs) / len(runs) for k in range(length)]
    return xs, [interval([rows[k]["value"] for rows in runs]) for k in range(length)]


def _plot(
    path: Path,
    results: list[dict],
    estimators: list[str],
    metric: str,
    x: str,
    labels: tuple[str, str, str],
    xlim: tuple[float, float] | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name in estimators:
        xs, stats = aligned(results, name, metric, x)
        means = [s.mean for s in stats]
        (line,) = ax.plot(xs, means, marker="o" if len(xs) < 15 else None, ms=3, label=name)
        if any(s.n >= 2 for s in stats):
            ax.fill_between(
                xs,
                [s.low if s.n >= 2 else s.mean for s in stats],
                [s.high if s.n >= 2 else s.mean for s in stats],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    xlabel, ylabel, title = labels
    if xlim is not None and all(map(math.isfinite, xlim)):
        ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    plt.close(fig)


def write_plots(out: Path, s, results: list[dict]) -> None:
    """``elbo_vs_steps.png``, ``elbo_vs_time.png`` and ``grad_variance.png`` into ``out``."""
    band = f"\n(mean and 95% band over {s.seeds} seeds)" if s.seeds > 1 else ""
    _plot(
        out / "elbo_vs_steps.png",
        results,
        s.estimators,
        "eval_elbo",
        "step",
        (
            "training step",
            f"ELBO per example (nats, {s.eval_examples} training examples)",
            f"{s.model}: training ELBO{band}",
        ),
    )
    # one time axis for every estimator: under --equal time they all trained equally long
    end = max((r["wall_time_s"] for r in results if r["metric"] == "eval_elbo"), default=0.0)
    _plot(
        out / "elbo_vs_time.png",
        results,
        s.estimators,
        "eval_elbo",
        "wall_time_s",
        (
            "training wall-clock per run (s)",
            "ELBO per example (nats)",
            f"{s.model}: training ELBO vs time{band}",
        ),
        xlim=(0.0, end * 1.02) if end > 0 else None,
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
            f"{s.model}: gradient variance of the encoder{band}",
        ),
    )
