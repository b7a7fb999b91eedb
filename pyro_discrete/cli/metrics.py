"""``metrics.csv``: the training curve of a ``fit`` run, appended every ``--log-every`` steps.

Rows are appended and flushed as training goes, so that a killed run keeps its curve up to
the last flush. On resume the file is cut back to the checkpoint's step (the steps after it
are trained again and write their rows again). The only damage a kill can do is a torn last
row, one without its newline: that row is dropped, with a message. Any other row that is
not a metrics row (wrong fields, steps that do not increase) is an error naming its line,
since neither a kill nor this module can produce it. A value may be ``nan`` (a smoothed
ELBO before its first update is one): such a row is whole and kept.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pyro_discrete._io import atomic_write_text

from .errors import CLIError

__all__ = ["HEADER", "append_rows", "kept_rows", "start_metrics", "truncate_metrics"]

HEADER = "step,wall_time_s,train_elbo_ema"


def _parse(line: str) -> int | None:
    """The step of a well-formed row; ``None`` if the row is malformed."""
    fields = line.split(",")
    if len(fields) != 3:
        return None
    try:
        step = int(fields[0])
        for value in fields[1:]:
            float(value)
    except ValueError:
        return None
    return step if step > 0 else None


def start_metrics(path: Path) -> None:
    """A new ``metrics.csv`` holding only the header."""
    atomic_write_text(path, HEADER + "\n")


def kept_rows(path: Path, step: int) -> str | None:
    """The text of ``path`` cut back to the rows up to ``step`` (a checkpoint's), a torn last
    row dropped; ``None`` if the file is missing. Reads only: the caller writes it once every
    other check of a resume has passed.

    :raises CLIError: for a wrong header, or a row that is not a metrics row and not torn.
    """
    if not path.exists():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    if lines[0] != HEADER:
        raise CLIError(
            f"{path} does not start with the header {HEADER!r}; restore the file or "
            "move it away (the run then starts a new curve)"
        )
    rows = lines[1:]
    torn = rows.pop() if rows else ""  # after the last newline: "" unless a row was torn
    kept, previous = [], 0
    for number, row in enumerate(rows, start=2):
        row_step = _parse(row)
        if row_step is None or row_step <= previous:
            what = "is not a metrics row" if row_step is None else f"repeats step {row_step}"
            if row_step is not None and row_step < previous:
                what = f"goes back to step {row_step} after step {previous}"
            raise CLIError(
                f"{path} line {number} {what} ({row[:40]!r}); fix or delete that line, then "
                "resume"
            )
        previous = row_step
        if row_step <= step:
            kept.append(row + "\n")
    if torn:
        print(
            f"pyro-discrete: dropping the torn last row of {path} ({torn[:40]!r}, without its "
            "newline: the run was killed while writing it)",
            file=sys.stderr,
        )
    return HEADER + "\n" + "".join(kept)


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows up to ``step`` (see :func:`kept_rows`), writing only if that changes it.

    :raises CLIError: for a wrong header or a malformed row.
    """
    kept = kept_rows(path, step)
    if kept is None:
        print(
            f"pyro-discrete: {path} is missing; the curve restarts at the checkpoint",
            file=sys.stderr,
        )
        start_metrics(path)
    elif kept != path.read_text(encoding="utf-8", errors="replace"):
        # a file that needs no change is left alone, time stamp included
        atomic_write_text(path, kept)


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
