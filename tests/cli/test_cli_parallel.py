"""``pyro-discrete fit --devices 2 --strategy ddp`` (pyro_discrete/cli/parallel.py): two CPU
processes (gloo, one thread each) write the single-process run directory, and a run moves
between 1 and 2 processes with ``--resume``.

The commands run in subprocesses, as a user runs them: Lightning starts the second process
by running the same command line again.
"""

from __future__ import annotations

import json

import pytest
import torch
from cli_support import RUN, driven, finish, load, run_subprocess

from pyro_discrete.cli import checkpoints, rundir

pytest.importorskip("lightning")

ON_TWO = ["--devices", "2", "--accelerator", "cpu", "--strategy", "ddp"]
# the fault suite's run (mixture of experts, NVIL: a baseline network and running
# statistics), with a metrics row every 4 steps and a checkpoint every 8
PARALLEL_RUN = [*RUN, "--log-every", "4", "--checkpoint-every", "8"]


def _fit(cache, out, steps: int, *extra: str) -> None:
    proc = run_subprocess(cache, *PARALLEL_RUN, "--steps", str(steps), "--out", str(out), *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _resume(cache, out, steps: int, *extra: str) -> None:
    argv = ["fit", "--out", str(out), "--resume", "--steps", str(steps), "--no-progress"]
    proc = run_subprocess(cache, *argv, "--log-every", "4", "--eval-examples", "20", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _metric_steps(out) -> list[int]:
    rows = (out / rundir.METRICS).read_text().splitlines()
    assert rows[0] == "step,wall_time_s,train_elbo_ema"
    return [int(row.split(",")[0]) for row in rows[1:]]


def _adam_steps(out) -> set[int]:
    """Adam's step count of every trained parameter in the run's checkpoint."""
    return {int(s["step"]) for s in load(out / rundir.CHECKPOINT)["optim"].values()}


def _config(out) -> dict:
    return json.loads((out / rundir.CONFIG).read_text())


def test_two_processes_write_the_run_and_resume_on_one(data_cache, tmp_path):
    out = tmp_path / "run"
    _fit(data_cache, out, 24, *ON_TWO)
    # rank 0 alone writes: each row once, at --log-every
    assert _metric_steps(out) == [4, 8, 12, 16, 20, 24]
    assert _config(out)["parallel"] == {
        "devices": 2,
        "num_nodes": 1,
        "accelerator": "cpu",
        "strategy": "ddp",
    }
    checkpoint = checkpoints.load_checkpoint(out)  # the single-process reader accepts it
    assert checkpoint["step"] == 24
    assert any(name.startswith("pyro_discrete/") for name in checkpoint["param_store"]["params"])
    assert _adam_steps(out) == {24}
    summary = json.loads((out / rundir.SUMMARY).read_text())
    assert summary["processes"] == 2 and summary["step"] == 24

    _resume(data_cache, out, 32)  # one process, the single-process path
    assert _metric_steps(out) == [4, 8, 12, 16, 20, 24, 28, 32]
    assert "parallel" not in _config(out)
    assert load(out / rundir.CHECKPOINT)["step"] == 32
    assert _adam_steps(out) == {32}  # the moments continued, they did not restart


def test_one_process_run_resumes_on_two(data_cache, tmp_path):
    out = tmp_path / "run"
    _fit(data_cache, out, 8)
    # Mark the checkpoint: shift every model and guide weight of its param store (which a
    # resume loads last) by 1. Resumed from it, 8 Adam steps at lr 3e-4 move a weight by far
    # less than 1 (at most 8 * 3e-4 * (1 - 0.9) / sqrt(1 - 0.99999) < 0.08); started
    # afresh, every weight would be about 1 away from the marked value.
    checkpoint = load(out / rundir.CHECKPOINT)
    store = checkpoint["param_store"]["params"]
    marked = {}
    for name, value in store.items():
        if not name.startswith("pyro_discrete/"):
            store[name] = marked[name] = value + 1.0
    assert marked
    torch.save(checkpoint, out / rundir.CHECKPOINT)

    _resume(data_cache, out, 16, *ON_TWO)
    assert _metric_steps(out) == [4, 8, 12, 16]
    after = load(out / rundir.CHECKPOINT)
    assert after["step"] == 16 and _adam_steps(out) == {16}
    assert _config(out)["parallel"]["devices"] == 2
    for name, value in marked.items():
        assert (after["param_store"]["params"][name] - value).abs().max() < 0.1, name


def test_a_run_trained_to_its_end_without_a_summary_gets_one_on_resume(data_cache, tmp_path):
    """A run stopped after its last checkpoint but before its summary: the multi-process
    resume writes the summary from the checkpoint (as the single-process one does) instead
    of calling the run finished without it."""
    out = tmp_path / "run"
    _fit(data_cache, out, 8)
    (out / rundir.SUMMARY).unlink()
    before = (out / rundir.CHECKPOINT).read_bytes()
    _resume(data_cache, out, 8, *ON_TWO)
    summary = json.loads((out / rundir.SUMMARY).read_text())
    assert summary["complete"] and summary["step"] == 8
    assert (out / rundir.CHECKPOINT).read_bytes() == before  # nothing trained


def test_sigterm_stops_every_process_and_saves_the_last_step(data_cache, tmp_path):
    out = tmp_path / "run"
    argv = [*PARALLEL_RUN, "--steps", "40", "--out", str(out), *ON_TWO]
    code, _, err = finish(driven("sigterm-rank0@5", *argv), timeout=300)
    assert code == 143, err[-3000:]
    assert "Traceback" not in err
    assert "interrupted at step 5 on every process; checkpoint of step 5 saved" in err
    assert load(out / rundir.CHECKPOINT)["step"] == 5  # the step that was complete
    assert _metric_steps(out) == [4]
    assert not (out / ".pyro-discrete.lock").exists()


def test_a_killed_rank_stops_the_others_with_one_line(data_cache, tmp_path):
    out = tmp_path / "run"
    argv = [*PARALLEL_RUN, "--steps", "40", "--out", str(out), *ON_TWO]
    code, _, err = finish(driven("sigkill-rank1@9", *argv), timeout=300)
    assert code == 2, err[-3000:]
    assert "Traceback" not in err and "Connection reset" not in err
    line = err.strip().splitlines()[-1]
    assert "rank 1" in line and "SIGKILL" in line and "checkpoint of step 8 is intact" in line
    assert load(out / rundir.CHECKPOINT)["step"] == 8
