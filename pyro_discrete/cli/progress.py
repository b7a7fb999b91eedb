"""Progress on stderr: a bar on a terminal, a line every so often in a log file or a pipe."""

from __future__ import annotations

import sys
import time

__all__ = ["PROGRESS_LINE_INTERVAL", "progress_bar"]


class _LineProgress:
    """A progress report for a log file or a pipe: one line every ``interval`` seconds
    (and one at the end), where a terminal's bar would write a carriage return per update."""

    def __init__(self, total: int, initial: int, desc: str, interval: float, file) -> None:
        self.total, self.n, self.desc = total, initial, desc
        self.interval, self.file = interval, file
        self.postfix: dict = {}
        self._last = time.monotonic()

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = values

    def _line(self) -> None:
        extra = ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        print(
            f"{self.desc}: {self.n}/{self.total}" + (f" ({extra})" if extra else ""),
            file=self.file,
            flush=True,
        )
        self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.interval:
            self._line()

    def close(self) -> None:
        self._line()


#: seconds between the progress lines written where stderr is not a terminal
PROGRESS_LINE_INTERVAL = 30.0


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    """A tqdm bar on stderr where stderr is a terminal; elsewhere (a log file, a pipe) a
    line every :data:`PROGRESS_LINE_INTERVAL` seconds. Disabled: a no-op with the same
    interface."""
    from tqdm.auto import tqdm

    if enabled and not sys.stderr.isatty():
        return _LineProgress(total, initial, desc, PROGRESS_LINE_INTERVAL, sys.stderr)
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        disable=not enabled,
        mininterval=0.5,
        dynamic_ncols=True,
        leave=True,
        file=sys.stderr,
    )
