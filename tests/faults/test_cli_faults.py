"""The command line under faults: kills, interrupts, concurrent runs, bad files, bad disks.

What ``pyro-discrete`` promises (see :mod:`pyro_discrete.cli`): nothing is lost (a run
killed or interrupted at any moment, then resumed, ends exactly like an uninterrupted one,
its metrics included), and every failure is named (exit status 2, one line, no traceback).
Each test injects one fault and checks that promise. The runs are the mixture of experts on
synthetic data with NVIL, a few steps long; the faults that need a process of their own
(signals, a second live process) use ``cli_driver.py``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from cli_support import (
    RUN,
    STEPS,
    assert_named_failure,
    assert_same_state,
    curve,
    driven,
    finish,
    fit,
    load,
)

from pyro_discrete import _io, cli

LOCK = ".pyro-discrete.lock"


def fingerprint(run_dir: Path) -> dict[str, tuple[str, int]]:
    """Content hash and modification time of every file of a run directory."""
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(run_dir.iterdir())
    }


def resume(out: Path, capsys=None, *extra: str, steps: int = STEPS) -> tuple[int, str]:
    code = fit(out, "--resume", *extra, steps=steps)
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def assert_equals_straight(out: Path, straight: Path) -> None:
    assert_same_state(out, straight)
    assert curve(out) == curve(straight)
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["valid_elbo"] == json.loads((straight / "summary.json").read_text())["valid_elbo"]
    )
    assert not list(out.glob("*.tmp")) and not (out / LOCK).exists()


# -- kills and interrupts --------------------------------------------------------------------


@pytest.mark.parametrize("name, status", [("sigint", 130), ("sigterm", 143)])
def test_interrupt_saves_the_current_step(tmp_path, straight, capsys, name, status):
    out = tmp_path / "run"
    code, _, err = finish(driven(f"{name}@4", *RUN, "--steps", str(STEPS), "--out", str(out)))
    assert code == status, err
    assert "Traceback" not in err
    assert f"interrupted at step 4; checkpoint of step 4 saved in {out / 'checkpoint.pt'}" in err
    assert load(out / "checkpoint.pt")["step"] == 4  # not the step-3 checkpoint: nothing lost
    assert [step for step, _ in curve(out)] == [1, 2, 3, 4]  # rows flushed as they came
    assert not (out / LOCK).exists()
    code, _ = resume(out)
    assert code == 0
    assert_equals_straight(out, straight)


def test_sigkill_at_a_random_step_then_resume(tmp_path, straight, capsys):
    step = random.Random(20240611).randrange(4, STEPS)  # past the first checkpoint
    out = tmp_path / "run"
    code, _, err = finish(driven(f"sigkill@{step}", *RUN, "--steps", str(STEPS), "--out", str(out)))
    assert code == -signal.SIGKILL, err
    assert load(out / "checkpoint.pt")["step"] == step // 3 * 3  # --checkpoint-every 3
    assert len(curve(out)) == step  # metrics flushed every --log-every, not at checkpoints
    assert (out / LOCK).exists()  # the killed owner could not release it
    code, err = resume(out, capsys)
    assert code == 0, err
    assert "taking over the stale lock" in err
    assert_equals_straight(out, straight)


def test_sigkill_at_a_random_moment_then_resume(tmp_path, straight, capsys):
    # the moment is not chosen by a step: whatever it interrupts, resume must recover
    out = tmp_path / "run"
    proc = driven("sigkill@999999", *RUN, "--steps", str(STEPS), "--out", str(out))
    deadline = time.monotonic() + 120
    while not (out / "metrics.csv").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.3))
    proc.kill()
    finish(proc)
    if not (out / "checkpoint.pt").exists():  # killed before the first checkpoint
        code, err = resume(out, capsys)
        assert_named_failure(code, err, "no checkpoint.pt", "--overwrite")
        assert fit(out, "--overwrite") == 0
    else:
        code, err = resume(out, capsys)
        assert code == 0, err
    assert_equals_straight(out, straight)


def test_sigkill_during_a_checkpoint_write(tmp_path, straight, capsys):
    out = tmp_path / "run"
    code, _, err = finish(
        driven("sigkill-in-checkpoint-write@2", *RUN, "--steps", str(STEPS), "--out", str(out))
    )
    assert code == -signal.SIGKILL, err
    assert load(out / "checkpoint.pt")["step"] == 3  # the previous checkpoint is whole
    orphans = list(out.glob("checkpoint.pt.*.tmp"))
    assert len(orphans) == 1 and orphans[0].stat().st_size > 0
    code, err = resume(out, capsys)
    assert code == 0, err
    assert f"removed {orphans[0].name}" in err
    assert_equals_straight(out, straight)


def test_sigkill_during_the_final_validation(tmp_path, straight, capsys):
    out = tmp_path / "run"
    code, _, _ = finish(
        driven("sigkill-in-validation", *RUN, "--steps", str(STEPS), "--out", str(out))
    )
    assert code == -signal.SIGKILL
    before = hashlib.sha256((out / "checkpoint.pt").read_bytes()).hexdigest()
    code, err = resume(out, capsys)
    assert code == 0, err
    # only the summary was missing: the checkpoint is not written again
    assert hashlib.sha256((out / "checkpoint.pt").read_bytes()).hexdigest() == before
    assert_equals_straight(out, straight)


def test_torn_last_metrics_row_is_dropped(tmp_path, straight, capsys):
    out = tmp_path / "run"
    assert fit(out, steps=6) == 0
    with (out / "metrics.csv").open("a") as f:
        f.write("7,0.0")  # a row cut off by a kill
    code, err = resume(out, capsys)
    assert code == 0, err
    assert "torn last row" in err
    assert_equals_straight(out, straight)


# -- resuming: finished runs, other options, foreign checkpoints -------------------------------


def test_resume_of_a_finished_run_changes_nothing(tmp_path, capsys):
    out, longer = tmp_path / "run", tmp_path / "longer"
    assert fit(out) == 0
    before = fingerprint(out)
    code, err = resume(out, capsys)
    assert code == 0 and "already finished at step 8" in err
    assert fingerprint(out) == before
    # extending it afterwards equals one longer run
    assert resume(out, steps=11)[0] == 0
    assert fit(longer, steps=11) == 0
    assert_same_state(out, longer)
    assert curve(out) == curve(longer)


@pytest.mark.parametrize(
    "option, value, stored",
    [
        ("--lr", "0.001", "0.0003"),
        ("--batch-size", "12", "24"),
        ("--seed", "1", "0"),
        ("--binarization", "dynamic", "static"),
        ("--cv-lr-factor", "5", "10.0"),
        ("--estimator", "reinforce", "nvil"),
        ("--data", "fashion_mnist", "synthetic_moe"),
    ],
)
def test_resume_refuses_other_training_options(tmp_path, capsys, option, value, stored):
    out = tmp_path / "run"
    assert fit(out, steps=3) == 0
    before = fingerprint(out)
    code, err = resume(out, capsys, option, value)
    assert_named_failure(code, err, f"{option} {value}", f"the run has {stored}")
    assert fingerprint(out) == before


def test_resume_names_every_difference(tmp_path, capsys):
    out = tmp_path / "run"
    assert fit(out, steps=3) == 0
    code, err = resume(out, capsys, "--lr", "0.01", "--seed", "5", "--batch-size", "24")
    line = assert_named_failure(code, err, "--lr 0.01", "--seed 5")
    assert "--batch-size" not in line  # given, but equal to the run's


@pytest.mark.parametrize("option, value", [("--estimator", "reinforce"), ("--seed", "3")])
def test_checkpoint_of_another_run_is_refused(tmp_path, capsys, option, value):
    out, other = tmp_path / "run", tmp_path / "other"
    assert fit(out, steps=3) == 0
    assert fit(other, option, value, steps=3) == 0
    os.replace(other / "checkpoint.pt", out / "checkpoint.pt")
    code, err = resume(out, capsys)
    assert_named_failure(code, err, f"{option} {value}", "mixes two runs")
    code = cli.main(["evaluate", "--checkpoint", str(out), "--samples", "1"])
    assert_named_failure(code, capsys.readouterr().err, f"{option} {value}")


# -- damaged and foreign files ---------------------------------------------------------------


def _truncate_config(out: Path) -> None:
    text = (out / "config.json").read_text()
    (out / "config.json").write_text(text[: len(text) // 2])


def _drop_step(out: Path) -> None:
    checkpoint = load(out / "checkpoint.pt")
    del checkpoint["step"]
    torch.save(checkpoint, out / "checkpoint.pt")


def _nan_parameter(out: Path) -> None:
    checkpoint = load(out / "checkpoint.pt")
    name = next(iter(checkpoint["model"]))
    checkpoint["model"][name][..., 0] = float("nan")
    torch.save(checkpoint, out / "checkpoint.pt")


def _foreign_object(out: Path) -> None:
    torch.save(
        {"step": 3, "model": {}, "extra": socket.AddressFamily.AF_INET}, out / "checkpoint.pt"
    )


DAMAGE = {
    "truncated config.json": (_truncate_config, ["config.json", "not valid JSON"]),
    "binary config.json": (
        lambda out: (out / "config.json").write_bytes(os.urandom(64)),
        ["config.json"],
    ),
    "config.json without lr": (
        lambda out: (out / "config.json").write_text(
            json.dumps(
                {
                    k: v
                    for k, v in json.loads((out / "config.json").read_text()).items()
                    if k != "lr"
                }
            )
        ),
        ["config.json", "lr"],
    ),
    "checkpoint without step": (_drop_step, ["checkpoint.pt", "'step'"]),
    "NaN in a checkpoint": (_nan_parameter, ["checkpoint.pt", "NaN"]),
    "0-byte checkpoint": (
        lambda out: (out / "checkpoint.pt").write_bytes(b""),
        ["checkpoint.pt", "empty (0 bytes)"],
    ),
    "random bytes as checkpoint": (
        lambda out: (out / "checkpoint.pt").write_bytes(random.Random(1).randbytes(4096)),
        ["checkpoint.pt", "not a PyTorch checkpoint"],
    ),
    "truncated checkpoint": (
        lambda out: (out / "checkpoint.pt").write_bytes(
            (out / "checkpoint.pt").read_bytes()[:3000]
        ),
        ["checkpoint.pt", "truncated or damaged"],
    ),
    "checkpoint holding a Python object": (
        _foreign_object,
        ["checkpoint.pt", "a Python object (socket.AddressFamily)"],
    ),
    "garbage metrics row": (
        lambda out: (out / "metrics.csv").write_text(
            "step,wall_time_s,train_elbo_ema\n1,0.1,-3.0\n\x00garbage\n2,0.2,-2.9\n"
        ),
        ["metrics.csv", "line 3"],
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_files_are_named(tmp_path, capsys, damage):
    out = tmp_path / "run"
    assert fit(out, steps=3) == 0
    capsys.readouterr()
    spoil, words = DAMAGE[damage]
    spoil(out)
    before = fingerprint(out)
    code, err = resume(out, capsys)
    line = assert_named_failure(code, err, *words)
    assert "weights_only" not in line  # torch's advice (weights_only=False) would run code
    assert fingerprint(out) == before  # a refused resume touches nothing
    if damage != "garbage metrics row":  # evaluate reads config and checkpoint only
        code = cli.main(["evaluate", "--checkpoint", str(out), "--samples", "1"])
        assert_named_failure(code, capsys.readouterr().err, *words)


# -- output directories: a file, read-only, full ----------------------------------------------


@pytest.mark.parametrize("command", ["fit", "compare"])
def test_out_that_is_a_file(tmp_path, capsys, command):
    target = tmp_path / "notes.txt"
    target.write_text("my notes\n")
    argv = [*RUN, "--steps", "3"] if command == "fit" else ["compare", "--steps", "3"]
    code = cli.main([*argv, "--out", str(target), "--overwrite"])
    assert_named_failure(code, capsys.readouterr().err, str(target), "is a file")
    assert target.read_text() == "my notes\n"


def _full_disk_on(monkeypatch, name: str, after: int = 0) -> None:
    """Writes of ``name`` fail with ENOSPC, as ``write()`` on a full disk does (naming no
    file), once ``after`` of them have succeeded."""
    real = _io.atomic_write
    seen = []

    def atomic_write(path, write):
        if Path(path).name == name:
            seen.append(path)
            if len(seen) > after:

                def full(f):
                    f.write(b"partial")
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                return real(path, full)
        return real(path, write)

    monkeypatch.setattr(_io, "atomic_write", atomic_write)


def test_full_disk_during_training_keeps_the_last_checkpoint(
    tmp_path, straight, capsys, monkeypatch
):
    out = tmp_path / "run"
    _full_disk_on(monkeypatch, "checkpoint.pt", after=1)
    code = fit(out)
    assert_named_failure(
        code,
        capsys.readouterr().err,
        "checkpoint.pt",
        "at step 6",
        "No space left on device",
        "checkpoint of step 3 is intact",
    )
    assert load(out / "checkpoint.pt")["step"] == 3
    assert not list(out.glob("*.tmp")) and not (out / LOCK).exists()
    monkeypatch.undo()  # space freed: the run continues where it was
    code, err = resume(out, capsys)
    assert code == 0, err
    assert_equals_straight(out, straight)


def test_full_disk_at_the_start(tmp_path, capsys, monkeypatch):
    _full_disk_on(monkeypatch, "config.json")
    code = fit(tmp_path / "run")
    assert_named_failure(
        code, capsys.readouterr().err, "config.json", "No space left", "free some space"
    )


def test_full_disk_while_writing_a_comparison(tmp_path, capsys, monkeypatch):
    _full_disk_on(monkeypatch, "report.md")
    code = cli.main(
        [
            "compare",
            "--model",
            "mixture_of_experts",
            "--estimators",
            "reinforce",
            "--steps",
            "4",
            "--variance-points",
            "1",
            "--variance-samples",
            "2",
            "--eval-points",
            "1",
            "--eval-examples",
            "20",
            "--no-progress",
            "--out",
            str(tmp_path / "cmp"),
        ]
    )
    assert_named_failure(code, capsys.readouterr().err, "report.md", "No space left")
    assert list(tmp_path.iterdir()) == []  # no partial report, no lock, no temporary


def test_read_only_output_directory(tmp_path, capsys, read_only):
    parent = tmp_path / "shared"
    parent.mkdir()
    run = tmp_path / "run"
    assert fit(run, steps=3) == 0
    capsys.readouterr()
    read_only(parent)
    read_only(run)
    code = fit(parent / "run")
    assert_named_failure(
        code, capsys.readouterr().err, str(parent / "run"), "Read-only file system"
    )
    code, err = resume(run, capsys)
    assert_named_failure(code, err, str(run), "Read-only file system")


def test_data_cache_that_cannot_be_written(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("PYRO_DISCRETE_CACHE", str(blocker / "cache"))
    code = cli.main(["fit", "--steps", "3", "--no-progress", "--out", str(tmp_path / "run")])
    assert_named_failure(code, capsys.readouterr().err, "PYRO_DISCRETE_CACHE")
    assert not (tmp_path / "run").exists()


# -- concurrent runs and locks ---------------------------------------------------------------


def test_a_live_run_is_never_written_by_another(tmp_path, capsys):
    out = tmp_path / "run"
    assert fit(out, steps=3) == 0
    capsys.readouterr()
    owner = driven(
        "pause@5", *RUN, "--steps", str(STEPS), "--resume", "--out", str(out), stdin=subprocess.PIPE
    )
    try:
        assert owner.stdout.readline().strip() == "paused"
        before = fingerprint(out)
        for attempt in (["--overwrite"], ["--resume"]):
            code = fit(out, *attempt)
            assert_named_failure(code, capsys.readouterr().err, f"pid {owner.pid}", "in use")
        code = cli.main(["compare", "--steps", "3", "--overwrite", "--out", str(out)])
        assert_named_failure(code, capsys.readouterr().err, f"pid {owner.pid}")
        assert fingerprint(out) == before
        owner.stdin.write("\n")
        owner.stdin.flush()
        code, _, err = finish(owner)
    finally:
        if owner.poll() is None:
            owner.kill()
    assert code == 0, err
    assert load(out / "checkpoint.pt")["step"] == STEPS and (out / "summary.json").exists()
    assert [step for step, _ in curve(out)] == list(range(1, STEPS + 1))  # each row once


def _write_lock(out: Path, **owner) -> None:
    (out / LOCK).write_text(json.dumps({"command": "pyro-discrete fit", **owner}))


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize(
    "owner",
    [
        pytest.param(lambda: {"pid": _dead_pid(), "host": socket.gethostname()}, id="dead pid"),
        pytest.param(lambda: "{ torn", id="unreadable"),
    ],
)
def test_stale_lock_is_taken_over(tmp_path, capsys, owner):
    out = tmp_path / "run"
    assert fit(out, steps=3) == 0
    lock = owner()
    if isinstance(lock, dict):
        _write_lock(out, **lock)
    else:
        (out / LOCK).write_text(lock)
    code, err = resume(out, capsys, steps=4)
    assert code == 0, err
    assert "taking over the stale lock" in err
    assert not (out / LOCK).exists()


def test_lock_of_another_host_is_respected(tmp_path, capsys):
    out = tmp_path / "run"
    assert fit(out, steps=3) == 0
    _write_lock(out, pid=1, host="elsewhere")
    code, err = resume(out, capsys, steps=4)
    assert_named_failure(code, err, "pid 1 on host elsewhere", str(out / LOCK))
    assert load(out / "checkpoint.pt")["step"] == 3


def test_sigterm_during_compare_leaves_nothing(tmp_path):
    out = tmp_path / "cmp"
    code, _, err = finish(
        driven(
            "sigterm@2",
            "compare",
            "--model",
            "mixture_of_experts",
            "--estimators",
            "reinforce,nvil",
            "--steps",
            "4",
            "--variance-points",
            "1",
            "--variance-samples",
            "2",
            "--eval-points",
            "1",
            "--eval-examples",
            "20",
            "--no-progress",
            "--out",
            str(out),
        )
    )
    assert code == 143, err
    assert "Traceback" not in err and "interrupted by SIGTERM" in err
    assert list(tmp_path.iterdir()) == []


# -- impossible checkpoints, refused resumes that touch nothing (issue 22) ---------------------


def _set_step(step: int):
    def spoil(out: Path) -> None:
        checkpoint = load(out / "checkpoint.pt")
        checkpoint["step"] = step
        torch.save(checkpoint, out / "checkpoint.pt")

    return spoil


def _reshape_model_tensor(out: Path) -> None:
    checkpoint = load(out / "checkpoint.pt")
    name = next(iter(checkpoint["model"]))
    checkpoint["model"][name] = torch.zeros(7, 5)
    torch.save(checkpoint, out / "checkpoint.pt")


def _reshape_control_variate(out: Path) -> None:
    # a tensor of the param store that only the estimator's first step creates (NVIL's
    # baseline network): its shape can only be checked once the run is rebuilt
    checkpoint = load(out / "checkpoint.pt")
    params = checkpoint["param_store"]["params"]
    name = next(n for n in params if n.startswith("pyro_discrete/") and params[n].dim() == 2)
    params[name] = torch.zeros(3, 3)
    torch.save(checkpoint, out / "checkpoint.pt")


IMPOSSIBLE = {
    "negative step": (_set_step(-3), ["checkpoint.pt", "'step' is -3"]),
    "step beyond the run": (_set_step(1000), ["checkpoint.pt", "'step' is 1000"]),
    "model tensor of another shape": (
        _reshape_model_tensor,
        ["checkpoint.pt", "has shape (7, 5) in the checkpoint"],
    ),
    "control-variate tensor of another shape": (
        _reshape_control_variate,
        ["checkpoint.pt", "shape (3, 3) in the checkpoint"],
    ),
}


@pytest.mark.parametrize("damage", list(IMPOSSIBLE))
def test_impossible_checkpoint_is_refused_and_nothing_is_written(tmp_path, capsys, damage):
    out = tmp_path / "run"
    assert fit(out, steps=3) == 0
    capsys.readouterr()
    spoil, words = IMPOSSIBLE[damage]
    spoil(out)
    (out / "summary.json").unlink()  # an unfinished run: a resume would rewrite the most
    (out / "checkpoint.pt.abc123.tmp").write_bytes(b"half")  # and an orphan to remove
    before = fingerprint(out)
    # a longer --steps would rewrite config.json; a refused resume must not
    code, err = resume(out, capsys, steps=9)
    assert_named_failure(code, err, *words)
    assert fingerprint(out) == before


def test_shape_mismatch_names_the_tensor(tmp_path, capsys):
    out = tmp_path / "run"
    assert fit(out, steps=3) == 0
    capsys.readouterr()
    _reshape_model_tensor(out)
    code = cli.main(["evaluate", "--checkpoint", str(out), "--samples", "1"])
    line = assert_named_failure(code, capsys.readouterr().err, "has shape (7, 5)")
    assert "state_dict for" not in line and ":)" not in line  # torch's empty first line


def test_complete_nan_row_of_metrics_is_kept(tmp_path, straight, capsys):
    out = tmp_path / "run"
    assert fit(out, steps=6) == 0
    path = out / "metrics.csv"
    rows = path.read_text().splitlines()
    step6 = rows[-1].split(",")
    path.write_text("\n".join([*rows[:-1], f"{step6[0]},{step6[1]},nan"]) + "\n")
    code, err = resume(out, capsys)
    assert code == 0, err
    assert "torn" not in err
    assert (6, "nan") in curve(out)  # whole rows are never dropped
    assert [step for step, _ in curve(out)] == [step for step, _ in curve(straight)]


def test_complete_garbage_last_row_is_named_not_dropped(tmp_path, capsys):
    out = tmp_path / "run"
    assert fit(out, steps=3) == 0
    capsys.readouterr()
    with (out / "metrics.csv").open("a") as f:
        f.write("3,0.5\n")  # whole (it has its newline), but not a metrics row
    before = fingerprint(out)
    code, err = resume(out, capsys, steps=6)
    assert_named_failure(code, err, "metrics.csv", "line 5", "not a metrics row")
    assert fingerprint(out) == before


def test_directory_in_place_of_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert fit(out, steps=3) == 0
    capsys.readouterr()
    (out / "checkpoint.pt").unlink()
    (out / "checkpoint.pt").mkdir()
    code, err = resume(out, capsys, steps=6)
    line = assert_named_failure(code, err, "checkpoint.pt", "is a directory")
    assert "before its first checkpoint" not in line


def test_garbage_lock_file_says_what_it_holds(tmp_path, capsys):
    out = tmp_path / "run"
    assert fit(out, steps=3) == 0
    capsys.readouterr()
    (out / LOCK).write_text("hello, I am not a lock\n")
    code, err = resume(out, capsys, steps=4)
    assert code == 0, err
    assert "'hello, I am not a lock'" in err
    assert "pid None" not in err and "host None" not in err


def test_two_sigterms_still_exit_143_with_the_checkpoint(tmp_path, straight, capsys):
    out = tmp_path / "run"
    code, _, err = finish(
        driven("sigterm-twice@4", *RUN, "--steps", str(STEPS), "--out", str(out))
    )
    assert code == 143, err
    assert "Traceback" not in err
    assert load(out / "checkpoint.pt")["step"] == 4
    code, _ = resume(out)
    assert code == 0
    assert_equals_straight(out, straight)


# -- options checked before anything is written ----------------------------------------------


@pytest.mark.parametrize(
    "argv, option",
    [
        ([*RUN, "--lr", "nan"], "--lr"),
        ([*RUN, "--lr", "inf"], "--lr"),
        ([*RUN, "--lr", "-1"], "--lr"),
        ([*RUN, "--lr", "1e400"], "--lr"),
        ([*RUN, "--cv-lr-factor", "nan"], "--cv-lr-factor"),
        ([*RUN, "--seed", "-1"], "--seed"),
        (["compare", "--time-budget", "nan"], "--time-budget"),
        (["compare", "--iw-samples", "-1"], "--iw-samples"),
    ],
)
def test_bad_numbers_are_refused_at_parse_time(tmp_path, capsys, argv, option):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--out", str(out)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_batch_larger_than_the_data_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    code = fit(out, "--batch-size", "10000000")
    assert_named_failure(code, capsys.readouterr().err, "--batch-size 10000000", "10000")
    assert list(tmp_path.iterdir()) == []


def test_eager_divergence_is_named_like_the_compiled_one(tmp_path, capsys):
    out = tmp_path / "run"
    code = fit(out, "--lr", "1e12", "--compile", "off", steps=20)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "training diverged" in line and "try a lower --lr" in line, line
