"""Stopping ``fit`` on ``SIGINT``/``SIGTERM`` at a step it can save."""

from __future__ import annotations

import contextlib
import signal
import threading

from .errors import Interrupted

__all__ = ["StopRequest"]


class StopRequest:
    """Within its ``with`` block, ``SIGINT`` and ``SIGTERM`` ask the training loop to stop.

    The first signal only sets :attr:`signum`: the loop finishes its step, so the caller can
    save a consistent checkpoint. A second signal stops at once (``Interrupted``), except
    within :meth:`deferred` (the final checkpoint's write), where it is only noted. Outside
    the main thread signals cannot be handled, and the block changes nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}
        self._deferring = False

    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and not self._deferring:
            raise Interrupted(signum)
        self.signum = self.signum or signum

    @contextlib.contextmanager
    def deferred(self):
        """Signals within the block only ask to stop, as the first one does."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
