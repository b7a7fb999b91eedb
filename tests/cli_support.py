"""Helpers of the command-line tests (tests/cli/, tests/faults/): run it, read runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyro
import torch

from pyro_discrete import cli

ROOT = Path(__file__).resolve().parents[1]

# the smallest real runs: 6 steps, a checkpoint every 3, a metrics row every 2
FIT = [
    "fit",
    "--steps",
    "6",
    "--checkpoint-every",
    "3",
    "--eval-examples",
    "20",
    "--no-progress",
    "--log-every",
    "2",
]


#: the smallest gradient-variance and ELBO probes a ``compare`` test needs
COMPARE_PROBES = [
    "--variance-points",
    "2",
    "--variance-samples",
    "4",
    "--eval-points",
    "3",
    "--eval-examples",
    "50",
    "--no-progress",
]


def run_main(capsys, *argv):
    """``pyro-discrete *argv`` in this process: exit status, stdout, stderr."""
    code = cli.main([*argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def subprocess_env(cache) -> dict:
    return {
        **os.environ,
        "PYRO_DISCRETE_CACHE": str(cache),
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "PYTHONPATH": str(ROOT),
    }


def run_subprocess(cache, *argv, timeout=300):
    """``python -m pyro_discrete.cli *argv`` in a new process, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "pyro_discrete.cli", *argv],
        cwd=ROOT,
        env=subprocess_env(cache),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_same_state(a: Path, b: Path) -> None:
    """The checkpoints of two run directories hold the same step, parameters, control-variate
    state and optimiser state, bit for bit."""
    ca, cb = load(a / "checkpoint.pt"), load(b / "checkpoint.pt")
    assert ca["step"] == cb["step"]
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    assert ca["param_store"]["params"].keys() == cb["param_store"]["params"].keys()
    for key, value in ca["param_store"]["params"].items():
        assert torch.equal(value, cb["param_store"]["params"][key]), key
    assert ca["optim"].keys() == cb["optim"].keys()
    for name, state in ca["optim"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(cb["optim"][name][key]))
    assert torch.equal(ca["rng"], cb["rng"])


def curve(run_dir: Path) -> list[tuple[int, str]]:
    """The (step, smoothed ELBO) rows of metrics.csv; wall times differ between runs."""
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,wall_time_s,train_elbo_ema"
    return [(int(r.split(",")[0]), r.split(",")[2]) for r in rows[1:]]


# -- the fault suite (tests/faults)

DRIVER = ROOT / "tests" / "faults" / "cli_driver.py"

# The smallest real run: the mixture of experts on synthetic data (no MNIST), NVIL (a
# baseline network and running statistics to checkpoint), a checkpoint every 3 steps and a
# metrics row every step.
RUN = [
    "fit",
    "--model",
    "mixture_of_experts",
    "--estimator",
    "nvil",
    "--checkpoint-every",
    "3",
    "--log-every",
    "1",
    "--eval-examples",
    "20",
    "--no-progress",
]
STEPS = 8


def fit(out: Path, *extra: str, steps: int = STEPS) -> int:
    """An in-process ``fit`` of the reference run into ``out``; its exit status."""
    pyro.clear_param_store()
    return cli.main([*RUN, "--steps", str(steps), "--out", str(out), *extra])


def driven(fault: str, *argv: str, **popen) -> subprocess.Popen:
    """``pyro-discrete *argv`` in a subprocess with ``fault`` injected (see cli_driver.py)."""
    return subprocess.Popen(
        [sys.executable, str(DRIVER), fault, "--", *argv],
        cwd=ROOT,
        env=subprocess_env(os.environ["PYRO_DISCRETE_CACHE"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def assert_named_failure(code: int, err: str, *words: str) -> str:
    """Exit status 2, no traceback, and a last line of stderr that names ``words``."""
    assert code == 2, err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("pyro-discrete ") and ": error: " in line, line
    for word in words:
        assert word in line, (word, line)
    return line
