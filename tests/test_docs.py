"""The examples in pyro_discrete's docstrings (they are also what the API pages show)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docstring_examples_run() -> None:
    # A subprocess keeps the examples' global Pyro state (param store, validation flags)
    # away from the other tests; one intra-op thread because the examples are tiny and
    # thread barriers stall on a loaded machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "--doctest-modules",
            "pyro_discrete",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
