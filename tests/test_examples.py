"""Each example runs end to end in its --smoke mode (a subprocess, as a user would run it)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {
        **os.environ,
        "PYRO_DISCRETE_CACHE": str(cache),
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
    }


def run_example(env, name, *args):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), "--smoke", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_discrete_vae(env):
    out = run_example(env, "discrete_vae.py", "--estimator", "rebar")
    assert "step     30" in out
    assert "importance-weighted bound" in out and "PSIS k-hat" in out


def test_discrete_vae_categorical(env):
    out = run_example(
        env, "discrete_vae.py", "--model", "categorical_vae", "--estimator", "gumbel_rao"
    )
    assert "importance-weighted bound" in out


def test_mixture_of_experts(env):
    out = run_example(env, "mixture_of_experts.py")
    assert "TraceEnum_ELBO (exact)" in out
    for name in ("reinforce", "rebar", "rloo"):
        assert name in out
    assert "Part 2" in out and "bound" in out


def test_relax_toy(env, tmp_path):
    plot = tmp_path / "toy.png"
    out = run_example(env, "relax_toy.py", "--plot", str(plot))
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if "log Var[g]" in line)
    rows = [line.split() for line in lines[header + 1 : header + 5]]
    assert [r[0] for r in rows] == ["reinforce", "rebar", "relax", "expectation"]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # RELAX's learned control variate cuts the gradient variance by orders of magnitude even
    # within 200 steps (log-variances printed in the third column); the expectation model's
    # prediction, an average of the REINFORCE gradients it regresses on, varies less than them
    logvar = {r[0]: float(r[2]) for r in rows}
    assert logvar["relax"] < logvar["reinforce"] - 2
    assert logvar["expectation"] < logvar["reinforce"] - 0.5


def test_policy_gradient_cartpole_learns(env):
    """Eight updates of 16 CartPole episodes (seed 0, RLOO): the mean return of the last
    three updates is well above that of the first three (measured 27.1 -> 42.4)."""
    pytest.importorskip("gymnasium", reason="the rl extra (pip install -e '.[rl]') is missing")
    out = run_example(env, "policy_gradient.py", "--estimator", "rloo")
    line = next(x for x in out.splitlines() if x.startswith("mean return of the first"))
    first, last = (float(v) for v in re.findall(r"(\d+\.\d+)", line))
    assert last > first + 8, line


def test_data_parallel_resumes_on_two_processes(env, tmp_path):
    # 1 process (here) for 6 steps, then the example as a user runs it: 2 processes
    # resuming that checkpoint up to step 12 (a 2 -> 1 resume is in tests/lightning)
    import importlib.util

    path = ROOT / "examples" / "data_parallel.py"
    spec = importlib.util.spec_from_file_location("data_parallel", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    small = "--synthetic-size 480 --pixels 64 --estimator nvil".split()
    one = tmp_path / "one"
    first = example.main(
        [*small, *"--devices 1 --steps 6 --checkpoint-every 6".split(), "--root-dir", str(one)]
    )
    assert first["step"] == 6 and first["world_size"] == 1
    proc = subprocess.run(
        [
            sys.executable,
            str(path),
            *small,
            *"--devices 2 --accelerator cpu --steps 12".split(),
            "--ckpt-path",
            str(one / "checkpoints" / "step=6.ckpt"),
            "--root-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = sorted(line for line in proc.stdout.splitlines() if line.startswith("rank "))
    assert [r.split(":")[0] for r in ranks] == ["rank 0/2", "rank 1/2"], proc.stdout
    # same step, same parameters and running statistics on both processes
    assert ranks[0].split(":")[1] == ranks[1].split(":")[1]
    assert "step 12," in ranks[0]
    assert "effective batch 48, steps 6 -> 12" in proc.stdout
    assert "throughput:" in proc.stdout
