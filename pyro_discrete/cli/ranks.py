"""The processes of a multi-process ``fit`` stop together: on ``SIGINT``/``SIGTERM``, and when
one of them dies.

Lightning's ``Trainer`` already broadcasts, from rank 0 before every step, whether a
``SIGTERM`` was received, and then stops every rank with ``SIGTERMException``. Its own signal
handler, though, runs a collective from inside the handler, which deadlocks when the other
ranks are in another collective (two ranks waiting for each other for good). So the CLI
installs its own handler (:class:`RankStop`): the first ``SIGINT`` or ``SIGTERM`` only sets
the flag that the next step's broadcast reads; later ones are noted and ignored, so that
rank 0 can save the checkpoint of the last completed step.

When a process dies (``SIGKILL``, out of memory), the others would wait in a collective, or
fail with gloo's ``Connection reset by peer`` traceback; Lightning's own watchdog kills them
all silently after a few seconds. :func:`watch_children` replaces that watchdog: it names
the dead rank in one line, stops the other processes, and leaves the checkpoint on disk as
the last one saved.

Both rely on Lightning 2's launcher (``_SubprocessScriptLauncher``: ranks 1 to W-1 are
children of rank 0) and its ``Trainer`` internals; ``tests/cli/test_cli_parallel.py`` runs
them on two processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

__all__ = ["RankStop", "dead_rank", "watch_children"]

#: seconds between two looks at the children, and the grace given to the main process to
#: stop on its own (a collective fails at once when a peer's socket closes)
_POLL_S, _GRACE_S = 0.5, 10.0

_dead: dict[str, object] = {}


def dead_rank() -> str | None:
    """The line naming the process that died, once the watcher has seen one."""
    return _dead.get("line")  # type: ignore[return-value]


def _describe(rank: int, proc: subprocess.Popen) -> str:
    code = proc.returncode
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
    return f"the process of rank {rank} (pid {proc.pid}) {how}"


def _watch(children: list[subprocess.Popen]) -> None:
    while True:
        time.sleep(_POLL_S)
        for proc in children:
            proc.poll()
        if all(proc.returncode == 0 for proc in children):
            return
        failed = [(i + 1, p) for i, p in enumerate(children) if p.returncode]
        if failed:
            break
    rank, proc = failed[0]
    _dead["line"] = _describe(rank, proc)
    for other in children:
        if other.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                other.kill()  # it may wait in a collective for good: SIGTERM would not do
    time.sleep(_GRACE_S)
    # the main process is still stuck in a collective: end it with the line it could not print
    print(
        f"pyro-discrete fit: error: {_dead['line']}; every process is stopped; continue from "
        "the last checkpoint with --resume",
        file=sys.stderr,
        flush=True,
    )
    os._exit(2)


def watch_children(children: list[subprocess.Popen]) -> None:
    """Start the watcher of rank 0's children (in place of Lightning's)."""
    _dead.clear()
    threading.Thread(target=_watch, args=(children,), daemon=True, name="rank-watcher").start()


class RankStop:
    """``SIGINT``/``SIGTERM`` on a process of a multi-process ``fit``: the first asks every rank
    to stop before the next step (through the ``Trainer``'s per-step broadcast from rank 0),
    later ones are ignored. :attr:`signum` holds the first."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.signum: int | None = None
        self._previous: dict = {}
        # Lightning's handler broadcasts from inside the handler (a deadlock when the other
        # ranks are in another collective): not installed
        trainer._signal_connector.register_signal_handlers = lambda: None

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            self.trainer._signal_connector.received_sigterm = True

    def __enter__(self) -> RankStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
