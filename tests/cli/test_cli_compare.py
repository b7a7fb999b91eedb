"""``pyro-discrete compare``: the time budget kept, seeds with intervals, equal time, timing.

Real runs of the mixture of experts on its synthetic data (no MNIST), with budgets of a few
seconds; statistics and the schedule are tested on their own.
"""

import csv
import math
import re
import time
from types import SimpleNamespace

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from cli_support import COMPARE_PROBES, run_main, run_subprocess
from scipy import stats as scipy_stats

from pyro_discrete.cli.compare import measure, plots, report, stats
from pyro_discrete.cli.compare.schedule import Schedule
from pyro_discrete.diagnostics import importance_weighted_bound


@pytest.fixture(autouse=True)
def isolate(data_cache):
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="module", autouse=True)
def warm_imports():
    """What a fresh process imports on its first step and plot (torch's compiler package,
    which torch.optim loads, and matplotlib: 5-10 s on a loaded machine), loaded once, so that
    in-process budgets of a few seconds leave time to train whatever ran before. The
    subprocess test pays them inside its budget."""
    import matplotlib.pyplot  # noqa: F401
    import torch._dynamo  # noqa: F401


TINY = ["compare", "--model", "mixture_of_experts", *COMPARE_PROBES]


def read_csv(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def accounting(report_md: str) -> tuple[dict[str, float], float, float | None]:
    """The actual seconds of each phase, the actual total and the planned total."""
    section = report_md.split("## How the time was spent")[1]
    phases, total, planned = {}, None, None
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("phase", "---") or cells[2] == "not measured":
            continue
        if cells[0] == "**total**":
            total = float(cells[2])
            planned = None if cells[1] == "–" else float(cells[1])
        elif not cells[0].startswith("-"):
            phases[cells[0]] = float(cells[2])
    return phases, total, planned


# -- the budget -----------------------------------------------------------------------


def _budget_verdict(total: float, budget: float) -> str:
    """The words report.md must use for a run that took ``total`` of ``budget`` seconds."""
    if abs(total - budget) <= 0.05 * budget:
        return "within 5% of it"
    return f"{100 * (total / budget - 1):+.0f}% off it"


def _refused_for_want_of_time(err: str, budget: float) -> bool:
    """Whether ``compare`` refused because start-up and calibration, as measured, left too
    little of ``budget`` to train (a machine loaded enough makes that true of any budget):
    then the refusal must account for the whole budget, part by part."""
    match = re.search(r"--time-budget leaves ([\d.]+)s for training \((.*)\): ", err)
    if match is None:
        return False
    parts = [float(x) for x in re.findall(r" ([\d.]+)s", " " + match.group(2))]
    assert "start-up" in match.group(2) and "calibration" in match.group(2), err
    assert sum(parts) + float(match.group(1)) >= 0.9 * budget, err
    return True


def _assert_budget_logic(out, budget: float) -> None:
    """What the budget promises whatever the machine's load: no estimator trained more steps
    than the budget affords even at its fastest measured step (a plan that ignored the
    budget would run to --steps 1000000), every one trained, and the budget, not --steps,
    ended training."""
    rows = read_csv(out / "results.csv")
    for name in {r["estimator"] for r in rows}:

        def value(metric, name=name):
            return next(
                float(r["value"])
                for r in rows
                if r["estimator"] == name and r["seed"] == "0" and r["metric"] == metric
            )

        steps, fastest_ms = value("steps"), value("ms_p10")
        assert 0 < steps < 1_000_000, (name, steps)
        assert steps * fastest_ms / 1000 <= budget, (name, steps, fastest_ms)
    assert "training ended at --steps" not in (out / "report.md").read_text()


def test_time_budget_is_kept_and_accounted(capsys, tmp_path):
    """In-process, the budget's origin is main()'s start. The assertions hold under any load
    (no bound on wall time): the plan adds up to the budget, the account adds up to its
    total, the verdict tells the truth about the total, and training stops where the budget
    says, not at --steps."""
    budget = 12.0
    out = tmp_path / "cmp"
    t0 = time.perf_counter()
    code, _, err = run_main(
        capsys, *TINY, "--estimators", "reinforce,nvil", "--time-budget", str(budget),
        "--steps", "1000000", "--out", str(out),
    )  # fmt: skip
    wall = time.perf_counter() - t0
    if code == 2 and _refused_for_want_of_time(err, budget):
        return
    assert code == 0, err
    text = (out / "report.md").read_text()
    phases, total, planned = accounting(text)
    assert set(phases) >= {
        "start-up",
        "calibration",
        "training",
        "evaluations",
        "gradient variance",
        "report",
    }
    # the phases (and the unattributed rest) add up to the total, measured inside main()
    assert sum(phases.values()) == pytest.approx(total, abs=0.1 * len(phases))
    assert total <= wall + 0.05  # the table rounds to 0.1 s
    assert planned == pytest.approx(budget, abs=0.1)  # the plan fills the budget exactly
    assert phases["training"] > 0
    # however the timing went, the report says so truthfully (its table rounds the total)
    assert any(_budget_verdict(total + d, budget) in text for d in (-0.05, 0.0, 0.05)), total
    _assert_budget_logic(out, budget)


def test_time_budget_counts_from_process_start(data_cache, tmp_path):
    """As a command, interpreter start-up is inside the budget (the report's start-up phase
    holds the imports, before main() ran) and the interpreter's exit is planned for."""
    budget = 25.0
    out = tmp_path / "cmp"
    argv = [*TINY, "--estimators", "reinforce", "--time-budget", str(budget), "--out", str(out)]
    argv += ["--steps", "1000000"]  # the budget, not --steps, ends training
    t0 = time.perf_counter()
    proc = run_subprocess(data_cache, *argv, timeout=300)
    wall = time.perf_counter() - t0
    if proc.returncode == 2 and _refused_for_want_of_time(proc.stderr, budget):
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (out / "report.md").read_text()
    phases, total, planned = accounting(text)
    assert phases["start-up"] > 0  # the interpreter's imports, before main() ran
    assert total < wall + 0.05
    assert planned == pytest.approx(budget, abs=0.1)
    assert "interpreter exit (after this report)" in text
    _assert_budget_logic(out, budget)


def test_time_budget_sizes_the_optional_measurements(capsys, tmp_path):
    """2,000 gradient draws at each of 5 points for 2 estimators cannot fit in 10 s on any
    machine: rather than refusing, the comparison draws fewer (and says so)."""
    out = tmp_path / "cmp"
    code, _, err = run_main(
        capsys, "compare", "--model", "mixture_of_experts", "--no-progress",
        "--estimators", "reinforce,nvil", "--variance-samples", "2000",
        "--variance-points", "5", "--eval-examples", "50", "--eval-points", "3",
        "--time-budget", "10", "--out", str(out),
    )  # fmt: skip
    assert "--variance-samples 2000 -> " in err  # sized before anything else was decided
    if code == 2 and _refused_for_want_of_time(err, 10.0):
        return  # a machine so loaded that even the smallest measurements leave no training
    assert code == 0, err
    text = (out / "report.md").read_text()
    sized = re.search(r"--variance-samples 2000 -> (\d+)", text)
    assert sized and 10 <= int(sized.group(1)) < 2000, text
    assert "made smaller than asked" in text
    rows = read_csv(out / "results.csv")
    assert any(r["metric"] == "grad_log_variance" for r in rows)


def test_time_budget_too_small(capsys, tmp_path):
    # 50 ms: less than the calibration alone (a few training steps and a plot) takes
    code, _, err = run_main(
        capsys, *TINY, "--estimators", "reinforce", "--time-budget", "0.05", "--out",
        str(tmp_path / "cmp"),
    )  # fmt: skip
    assert code == 2 and "--time-budget" in err and "calibration" in err
    assert list(tmp_path.iterdir()) == []


# -- seeds ------------------------------------------------------------------------------


def test_seeds_give_intervals_and_no_ranking_within_noise(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(stats.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    out = tmp_path / "cmp"
    code, _, err = run_main(
        capsys, *TINY, "--estimators", "reinforce,nvil", "--seeds", "3", "--steps", "6",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    rows = read_csv(out / "results.csv")
    start = {
        (r["estimator"], r["seed"]): float(r["value"])
        for r in rows
        if r["metric"] == "eval_elbo" and r["step"] == "0"
    }
    # each seed: one initialisation for all estimators; the seeds: independent ones
    for seed in "012":
        assert start[("reinforce", seed)] == start[("nvil", seed)]
    assert len({start[("reinforce", seed)] for seed in "012"}) == 3
    for name in ("reinforce", "nvil"):
        per_seed = report.seed_values(
            [
                {**r, "step": int(r["step"]), "value": float(r["value"])}
                for r in rows
                if r["seed"] != "mean"
            ],
            name,
            "final_elbo",
        )
        summary = next(
            r
            for r in rows
            if (r["estimator"], r["seed"], r["metric"]) == (name, "mean", "final_elbo")
        )
        expected = scipy_stats.t.interval(
            0.95, 2, loc=np.mean(per_seed), scale=scipy_stats.sem(per_seed)
        )
        assert float(summary["value"]) == pytest.approx(np.mean(per_seed), rel=1e-4)
        assert float(summary["ci95_low"]) == pytest.approx(expected[0], abs=1e-3)
        assert float(summary["ci95_high"]) == pytest.approx(expected[1], abs=1e-3)
    text = (out / "report.md").read_text()
    assert "over 3 seeds" in text and " ± " in text
    assert "**the machine was loaded**" in text
    # steps, evaluations per step (over the run), ms / step [10-90%]
    assert re.search(r"\| reinforce \| 6 \| 1 \(6\) \| [\d.]+ \[[\d.]+–[\d.]+\]", text)


def test_one_seed_says_a_ranking_needs_more(capsys, tmp_path):
    out = tmp_path / "cmp"
    code, _, err = run_main(
        capsys, *TINY, "--estimators", "reinforce,nvil", "--steps", "4", "--out", str(out)
    )
    assert code == 0, err
    text = (out / "report.md").read_text()
    assert "A ranking needs --seeds >= 2" in text
    assert " is better than " not in text


def _fake_results(values: dict[str, list[float]]) -> list[dict]:
    return [
        {"estimator": name, "seed": i, "metric": "eval_elbo", "step": 10, "wall_time_s": 1.0,
         "value": v}
        for name, vs in values.items()
        for i, v in enumerate(vs)
    ]  # fmt: skip


def test_ranking_only_outside_noise():
    s = SimpleNamespace(seeds=4, estimators=["a", "b", "c"])
    results = _fake_results(
        {"a": [-100.0, -100.2, -99.9, -100.1], "b": [-110.0, -110.1, -109.8, -110.3],
         "c": [-100.5, -98.0, -102.0, -99.0]}
    )  # fmt: skip
    lines = report._comparisons(s, results, "final_elbo", "Final ELBO", True)
    text = "\n".join(lines)
    assert "- a is better than b" in text  # far apart, tight intervals
    assert "- c is better than b" in text
    assert re.search(r"- (a and c|c and a): within noise", text)  # c's interval covers a's
    assert "a is better than c" not in text and "c is better than a" not in text


def test_plots_draw_a_band_per_estimator_with_seeds(tmp_path, monkeypatch):
    import matplotlib.axes

    bands = []
    original = matplotlib.axes.Axes.fill_between

    def fill_between(self, x, low, high, **kwargs):
        bands.append((list(x), list(low), list(high)))
        return original(self, x, low, high, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", fill_between)
    values = {"a": [-100.0, -101.0, -99.0], "b": [-90.0, -90.5, -89.5]}
    results = _fake_results(values)
    s = SimpleNamespace(seeds=3, estimators=["a", "b"], eval_examples=50, model="m", reference="a")
    plots.write_plots(tmp_path, s, results)
    # two ELBO plots, one band per estimator each; the variance plot has no rows
    assert len(bands) == 4
    x, low, high = bands[0]
    expected = stats.interval(values["a"])
    assert low == pytest.approx([expected.low]) and high == pytest.approx([expected.high])
    assert (tmp_path / "elbo_vs_time.png").read_bytes()[:4] == b"\x89PNG"


# -- equal time ---------------------------------------------------------------------------


def test_equal_time_gives_every_run_the_same_training_time(capsys, tmp_path):
    out = tmp_path / "cmp"
    code, _, err = run_main(
        capsys, *TINY, "--estimators", "reinforce,rebar", "--equal", "time", "--time-budget",
        "12", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    rows = [r for r in read_csv(out / "results.csv") if r["seed"] == "0"]

    def last(name, metric):
        return [r for r in rows if r["estimator"] == name and r["metric"] == metric][-1]

    steps = {n: int(float(last(n, "steps")["value"])) for n in ("reinforce", "rebar")}
    times = {n: float(last(n, "steps")["wall_time_s"]) for n in ("reinforce", "rebar")}
    slowest_step = max(float(last(n, "ms_p90")["value"]) for n in steps) / 1000
    # the same training time, to about a step (a run stops at the first step past the mark)
    assert abs(times["reinforce"] - times["rebar"]) <= 2 * slowest_step + 0.05 * max(times.values())
    assert steps["reinforce"] > steps["rebar"]  # REBAR's step costs more
    text = (out / "report.md").read_text()
    assert "**Equal time**" in text
    assert f"| reinforce | {steps['reinforce']} |" in text
    assert f"| rebar | {steps['rebar']} |" in text


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--equal", "time"], "--equal time needs --time-budget"),
        (["--equal", "time", "--time-budget", "60", "--steps", "5"], "--steps has no effect"),
    ],
)
def test_equal_time_bad_options(capsys, tmp_path, extra, words):
    code, _, err = run_main(capsys, *TINY, *extra, "--out", str(tmp_path / "cmp"))
    assert code == 2 and words in err
    assert list(tmp_path.iterdir()) == []


# -- pieces ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 12, 31, 80])
def test_t_interval_matches_scipy(n):
    values = list(np.random.default_rng(n).normal(3.0, 2.0, size=n))
    got = stats.interval(values)
    low, high = scipy_stats.t.interval(
        0.95, n - 1, loc=np.mean(values), scale=scipy_stats.sem(values)
    )
    assert got.mean == pytest.approx(np.mean(values))
    assert got.half_width == pytest.approx((high - low) / 2, rel=2e-4)
    assert math.isnan(stats.interval([1.0]).half_width)


def test_quantile_matches_numpy():
    values = list(np.random.default_rng(0).exponential(size=37))
    for q in (0.1, 0.25, 0.5, 0.9):
        assert stats.quantile(values, q) == pytest.approx(np.quantile(values, q))


def test_schedule_puts_points_on_boundaries_and_replans():
    schedule = Schedule("steps", 100, 10, eval_points=4, variance_points=2)
    assert schedule.targets[-1] == 100
    assert sorted(schedule.targets[i] for i in schedule.evals) == [25, 50, 75, 100]
    assert sorted(schedule.targets[i] for i in schedule.variances) == [50, 100]
    index = schedule.targets.index(30)
    schedule.replan(index, 200)  # the budget affords more: the rest is spread over 200
    assert schedule.targets[: index + 1] == [10, 20, 25, 30]
    assert schedule.targets[-1] == 200
    assert sorted(schedule.targets[i] for i in schedule.evals) == [25, 50, 100, 150, 200]
    assert sorted(schedule.targets[i] for i in schedule.variances) == [100, 200]


class GlobalLocation:
    """A latent location shared by all data points (global), data in a plate."""

    def model(self, x):
        loc = pyro.sample("loc", dist.Normal(0.0, 3.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    def guide(self, x):
        q = pyro.param("q_loc", torch.tensor(0.5))
        pyro.sample("loc", dist.Normal(q, 0.3))


def test_iw_bound_of_a_model_with_a_global_latent():
    x = torch.randn(150) + 0.5
    model = GlobalLocation()
    with pytest.raises(ValueError, match="batch_size=None"):
        importance_weighted_bound(model.model, model.guide, x, num_samples=4, batch_size=100)
    bound = measure.iw_bound(model, (x,), 4, seed=3)
    pyro.set_rng_seed(3)
    expected = importance_weighted_bound(
        model.model, model.guide, x, num_samples=4, batch_size=None, chunk_size=4
    )
    assert bound == pytest.approx(expected)
    assert math.isfinite(bound) and bound < 0
