"""``--compile`` of fit and compare: compiled runs train, resume exactly, and say so."""

import csv
import json

import pyro
import pytest
import torch
from cli_support import FIT, run_main

from pyro_discrete.cli import training
from pyro_discrete.cli.compiling import CPU_AUTO_MIN_STEPS, EAGER, choose_step
from pyro_discrete.cli.errors import CLIError
from pyro_discrete.infer import CompiledSVI


@pytest.fixture(autouse=True)
def isolate(data_cache):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
    torch.set_num_threads(old)


# -- the choice ----------------------------------------------------------------------------


def test_auto_on_cpu_compiles_long_runs_and_says_why_not_for_short_ones():
    cpu = torch.device("cpu")
    short = choose_step("auto", "auto", cpu, steps=CPU_AUTO_MIN_STEPS - 1)
    assert not short.compiled
    assert f"{CPU_AUTO_MIN_STEPS - 1} steps to train" in short.description
    assert "--compile on" in short.description
    assert not choose_step("auto", "auto", cpu).compiled  # steps not known in advance
    long = choose_step("auto", "auto", cpu, steps=CPU_AUTO_MIN_STEPS, estimators=["nvil"])
    assert long.backend == "trace" and long.description == "compiled: trace backend"


def test_an_estimator_that_cannot_be_compiled_is_eager_under_auto_and_refused_with_on():
    cpu = torch.device("cpu")
    auto = choose_step("auto", "auto", cpu, steps=10_000, estimators=["rloo", "unordered_set"])
    assert not auto.compiled and "unordered_set" in auto.description
    with pytest.raises(CLIError, match="--compile on: the step of estimator unordered_set"):
        choose_step("on", "auto", cpu, estimators=["unordered_set"])
    assert choose_step("on", "auto", cpu, estimators=["rloo"]).backend == "trace"


def test_fit_compile_on_with_unordered_set_is_one_line_before_any_file(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_main(
        capsys, *FIT, "--estimator", "unordered_set", "--compile", "on", "--out", str(out)
    )
    assert code == 2 and "Traceback" not in err
    assert "cannot be recorded as a tensor program; use --compile off" in err
    assert not out.exists()


def test_auto_compiles_on_cuda_and_on_uses_trace_on_cpu():
    assert choose_step("auto", "auto", torch.device("cuda")).backend == "cuda_graph"
    on = choose_step("on", "auto", torch.device("cpu"))
    assert on.backend == "trace" and on.description == "compiled: trace backend"
    assert on.warmup_steps == 3
    assert choose_step("auto", "trace+inductor", torch.device("cpu")).backend == "trace+inductor"
    assert choose_step("off", "auto", torch.device("cuda")) is EAGER


@pytest.mark.parametrize(
    "mode, backend, match",
    [
        ("on", "cuda_graph", "needs --device cuda"),
        ("off", "trace", "no effect with --compile off"),
    ],
)
def test_impossible_choices_are_refused(mode, backend, match):
    with pytest.raises(CLIError, match=match):
        choose_step(mode, backend, torch.device("cpu"))


def test_fit_refuses_cuda_graph_on_cpu_before_writing(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_main(
        capsys, *FIT, "--compile", "on", "--compile-backend", "cuda_graph", "--out", str(out)
    )
    assert code == 2 and "--device cuda" in err
    assert not out.exists()


# -- training ------------------------------------------------------------------------------


def test_run_builds_one_compiled_svi_and_keeps_it(data_cache):
    from pyro_discrete.cli.tasks import make_task

    task = make_task("sbn_linear1", "mnist", "static", 0)
    run = training.new_run(
        task,
        "nvil",
        3e-4,
        10.0,
        8,
        0,
        torch.device("cpu"),
        step_choice=choose_step("on", "auto", torch.device("cpu")),
    )
    assert isinstance(run.svi, CompiledSVI) and run.svi is run.svi
    training.advance(run, 5, log_every=5)
    # one trace for the run's one input structure, kept across steps
    assert run.svi.num_traces == 1 and len(run.svi.programs) == 1
    assert run.pending == [] and len(run.history) == 1
    assert torch.isfinite(torch.tensor(run.smoothed))


def test_non_finite_loss_is_named_at_the_sync(data_cache):
    from pyro_discrete.cli.tasks import make_task

    task = make_task("sbn_linear1", "mnist", "static", 0)
    run = training.new_run(task, "reinforce", 3e-4, 10.0, 8, 0, torch.device("cpu"))

    class Diverging:
        def __init__(self):
            self.calls = 0

        def step(self, *args):
            self.calls += 1
            return torch.tensor(float("nan") if self.calls == 3 else 1.0)

    run._svi = Diverging()
    with pytest.raises(FloatingPointError, match=r"at step 3 \(losses of steps 1-4"):
        training.advance(run, 8, log_every=4)
    assert run.step == 4  # read at the first sync after it, not later


def _curve(path):
    """``(step, smoothed ELBO)`` rows of a metrics.csv (wall times differ between runs)."""
    with path.open(newline="") as f:
        return [(r["step"], r["train_elbo_ema"]) for r in csv.DictReader(f)]


def _fit(capsys, out, *extra):
    code, _, err = run_main(capsys, *FIT, "--estimator", "nvil", "--out", str(out), *extra)
    assert code == 0, err
    return err


def test_compiled_fit_trains_says_so_and_resumes_exactly(capsys, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    err = _fit(capsys, a, "--compile", "on")
    assert "compiled: trace backend" in err
    summary = json.loads((a / "summary.json").read_text())
    assert summary["step_kind"] == "compiled: trace backend"
    rows = (a / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 3  # --log-every 2 over 6 steps
    # stop at step 3 (a fresh process would start a fresh CompiledSVI), then resume
    _fit(capsys, b, "--compile", "on", "--steps", "3")
    pyro.clear_param_store()
    _fit(capsys, b, "--compile", "on", "--resume")
    ca = torch.load(a / "checkpoint.pt", weights_only=True)
    cb = torch.load(b / "checkpoint.pt", weights_only=True)
    assert ca["step"] == cb["step"] == 6
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    for key, value in ca["param_store"]["params"].items():
        assert torch.equal(value, cb["param_store"]["params"][key]), key
    # Adam's moments and step counts of the compiled steps are in the checkpoint, equal too
    assert set(ca["optim"]) == set(cb["optim"])
    assert any("encoder" in name for name in ca["optim"])
    for name, state in ca["optim"].items():
        assert torch.as_tensor(state["step"]).item() == 6, name
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(cb["optim"][name][key]))
    assert ca["smoothed"] == cb["smoothed"]
    curve_a, curve_b = (_curve(d / "metrics.csv") for d in (a, b))
    # the shorter run logged its last step (3) too; every row of the full run is reproduced
    assert len(curve_a) == 3 and curve_a == [row for row in curve_b if row[0] != "3"]


def test_compiled_fit_equals_eager_at_the_same_seed(capsys, tmp_path):
    """The traced step replays the eager step's tensor operations and random draws: the
    same parameters, up to float rounding (the compiled Adam update is written with other
    tensor operations than the eager foreach one)."""
    a, b = tmp_path / "compiled", tmp_path / "eager"
    _fit(capsys, a, "--compile", "on")
    pyro.clear_param_store()
    err = _fit(capsys, b, "--compile", "off")
    assert "eager: --compile off" in err
    ca = torch.load(a / "checkpoint.pt", weights_only=True)
    cb = torch.load(b / "checkpoint.pt", weights_only=True)
    for key in ca["model"]:
        torch.testing.assert_close(ca["model"][key], cb["model"][key], rtol=1e-4, atol=1e-5)


def test_compare_with_compile_on_runs_and_reports_it(capsys, tmp_path):
    out = tmp_path / "cmp"
    code, _, err = run_main(
        capsys,
        "compare",
        "--estimators",
        "reinforce,nvil",
        "--steps",
        "8",
        "--eval-points",
        "2",
        "--variance-points",
        "1",
        "--variance-samples",
        "3",
        "--eval-examples",
        "20",
        "--iw-samples",
        "0",
        "--no-progress",
        "--compile",
        "on",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert "compare: compiled: trace backend" in err
    assert "steps compiled: trace backend" in (out / "report.md").read_text()
