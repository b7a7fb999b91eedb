"""The run lifecycle of pyro_discrete/cli/run.py as ``compare`` uses it (:meth:`Run.publish`):
``--out`` locked while the comparison runs, published whole, and nothing of the user's changed
or lost on any path.

The comparison itself is replaced by a stand-in that writes a report (and does whatever the
test needs while it "runs"): what is tested here is the directory's life, which real
comparisons test in tests/cli/test_cli_compare.py and tests/faults.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cli_support import ROOT, RUN, run_main, subprocess_env

from pyro_discrete import cli
from pyro_discrete.cli.errors import CLIError
from pyro_discrete.cli.lock import LOCK

COMPARE = ["compare", "--model", "mixture_of_experts", "--estimators", "reinforce", "--no-progress"]
REPORT = "# a finished report\n"


@pytest.fixture
def comparison(monkeypatch):
    """Replace the comparison by a stand-in: ``during(directory)`` is called while it runs
    (the directory it writes into), then it writes ``report.md``."""
    calls = {"during": lambda built: None}

    def run_compare(settings, out, progress=True, started=None, as_process=False):
        calls["during"](Path(out))
        (Path(out) / "report.md").write_text(REPORT)
        return Path(out) / "report.md"

    monkeypatch.setattr("pyro_discrete.cli.compare.run.run_compare", run_compare)
    return calls


def test_no_fit_or_compare_writes_an_output_while_a_comparison_builds_it(
    tmp_path, capsys, comparison, data_cache
):
    """Before Run.publish, --out did not exist while the comparison ran: a ``fit`` there
    started a run, which the published report then deleted without a word."""
    out = tmp_path / "cmp"
    refusals = []

    def during(built):
        capsys.readouterr()
        fit = cli.main([*RUN, "--steps", "3", "--out", str(out)])
        other = cli.main([*COMPARE, "--overwrite", "--out", str(out)])
        refusals.append((fit, other, capsys.readouterr().err))

    comparison["during"] = during
    code, stdout, err = run_main(capsys, *COMPARE, "--out", str(out))
    assert code == 0, err
    [(fit, other, inner_err)] = refusals
    assert fit == 2 and other == 2, inner_err
    lines = inner_err.strip().splitlines()
    assert len(lines) == 2 and all("in use by pid" in line for line in lines), inner_err
    assert all(f"pid {os.getpid()}" in line and "pyro-discrete compare" in line for line in lines)
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]
    assert (out / "report.md").read_text() == REPORT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp"]  # no lock, no temporary


def test_files_that_appear_in_out_while_comparing_are_never_deleted(tmp_path, capsys, comparison):
    """Before Run.publish, the finished report replaced --out whole: a file written into it
    meanwhile was deleted, although --overwrite was not given."""
    out = tmp_path / "cmp"

    def during(built):
        out.mkdir(exist_ok=True)
        (out / "notes.txt").write_text("mine\n")

    comparison["during"] = during
    code, _, err = run_main(capsys, *COMPARE, "--out", str(out))
    assert code == 2
    assert "notes.txt" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine\n"
    [kept] = [p for p in tmp_path.iterdir() if p != out]
    assert str(kept) in err and not kept.name.startswith(".")  # the report, where it says
    assert (kept / "report.md").read_text() == REPORT


def test_overwrite_replaces_what_appeared_too(tmp_path, capsys, comparison):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "old.txt").write_text("old\n")

    def during(built):
        (out / "new.txt").write_text("new\n")

    comparison["during"] = during
    code, _, err = run_main(capsys, *COMPARE, "--overwrite", "--out", str(out))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp"]


@pytest.mark.parametrize("existing", ["nothing", "an empty --out"])
def test_a_failed_comparison_changes_nothing(tmp_path, capsys, comparison, existing):
    """Before Run.publish, the parent directories made for --out stayed behind."""
    out = tmp_path / "a" / "b" / "cmp"
    if existing == "an empty --out":
        out.mkdir(parents=True)

    def during(built):
        assert (out / LOCK).exists()  # locked while it runs
        raise CLIError("no room for the report")

    comparison["during"] = during
    code, _, err = run_main(capsys, *COMPARE, "--out", str(out))
    assert code == 2 and "no room for the report" in err
    if existing == "nothing":
        assert list(tmp_path.iterdir()) == []
    else:
        assert out.is_dir() and list(out.iterdir()) == []
        assert [p.name for p in out.parent.iterdir()] == ["cmp"]  # no temporary


def test_a_refused_comparison_changes_nothing(tmp_path, capsys, comparison):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    code, _, err = run_main(capsys, *COMPARE, "--out", str(out))
    assert code == 2
    assert "already exists and is not empty; pass --overwrite to replace it" in err
    assert [p.name for p in tmp_path.iterdir()] == ["cmp"]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_what_a_killed_comparison_left_is_cleaned_by_the_next(tmp_path, capsys, comparison):
    """A comparison killed by SIGKILL leaves its lock file in --out and its half-written
    output in a hidden sibling; the next comparison into --out takes both over, saying so.
    (Before Run.publish such an --out could not even be represented: the lock lived in
    the parent directory, and the hidden output stayed there for good.)"""
    work = tmp_path / "work"
    work.mkdir()
    out = work / "cmp"
    killed = textwrap.dedent(
        f"""
        import os, signal
        from pyro_discrete.cli.run import Run
        with Run.publish({str(out)!r}, overwrite=False) as built:
            (built / "report.md").write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = subprocess_env(tmp_path / "cache")
    proc = subprocess.run([sys.executable, "-c", killed], cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in out.iterdir()] == [LOCK]
    [partial] = [p for p in work.iterdir() if p.name.startswith(".cmp.partial-")]
    code, _, err = run_main(capsys, *COMPARE, "--out", str(out))
    assert code == 0, err
    assert "taking over the stale lock" in err and f"removed {partial}" in err
    assert [p.name for p in work.iterdir()] == ["cmp"]
    assert (out / "report.md").read_text() == REPORT
