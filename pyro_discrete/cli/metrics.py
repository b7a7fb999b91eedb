"""``metrics.csv``: the training curve of a ``fit`` run, appended every ``--log-every`` steps.

Rows are appended and flushed as training goes, so that a killed run keeps its curve up to
the last flush. On resume the file is cut back to the checkpoint's step (the steps after it
are trained again and write their rows again), and a torn last row, which only a process
killed while writing it leaves, is dropped; a malformed row elsewhere is an error, since
neither a kill nor this module can produce it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from pyro_discrete._io import atomic_write_text

from .errors import CLIError

__all__ = ["HEADER", "append_rows", "start_metrics", "truncate_metrics"]

HEADER = "step,wall_time_s,train_elbo_ema"


def _parse(line: str) -> int | None:
    """The step of a well-formed row; ``None`` if the row is malformed."""
    fields = line.split(",")
    if len(fields) != 3:
        return None
    try:
        step = int(fields[0])
        values = [float(v) for v in fields[1:]]
    except ValueError:
        return None
    return step if step > 0 and all(map(math.isfinite, values)) else None


def start_metrics(path: Path) -> None:
    """A new ``metrics.csv`` holding only the header."""
    atomic_write_text(path, HEADER + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows up to ``step`` (a checkpoint's), dropping a torn last row.

    :raises CLIError: for a wrong header or a malformed row that is not the last.
    """
    if not path.exists():
        print(
            f"pyro-discrete: {path} is missing; the curve restarts at the checkpoint",
            file=sys.stderr,
        )
        start_metrics(path)
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    if lines[0] != HEADER:
        raise CLIError(
            f"{path} does not start with the header {HEADER!r}; restore the file or "
            "move it away (the run then starts a new curve)"
        )
    rows = lines[1:]
    if rows and rows[-1] == "":
        rows.pop()  # the newline that ends the last whole row
    elif rows:
        rows[-1] = ""  # no newline: the last row was being written when the run was killed
    kept = []
    for number, row in enumerate(rows, start=2):
        row_step = _parse(row)
        if row_step is None:
            if number == len(rows) + 1:
                print(f"pyro-discrete: dropping the torn last row of {path}", file=sys.stderr)
                continue
            raise CLIError(
                f"{path} line {number} is not a metrics row ({row[:40]!r}); fix or delete that "
                "line, then resume"
            )
        if row_step <= step:
            kept.append(row + "\n")
    kept_text = HEADER + "\n" + "".join(kept)
    if kept_text != text:  # a file that needs no change is left alone, time stamp included
        atomic_write_text(path, kept_text)


def append_rows(path: Path, history: list[dict]) -> None:
    """Append the rows of ``history`` to ``path`` and flush them to the file."""
    if not history:
        return
    text = "".join(
        f"{row['step']},{row['wall_time_s']:.3f},{row['train_elbo_ema']:.4f}\n" for row in history
    )
    with path.open("a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
