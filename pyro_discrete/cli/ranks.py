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

from .stopping import StopRequest

__all__ = ["RankStop", "dead_rank", "interrupted", "peer_died", "watch_children"]

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


class RankStop(StopRequest):
    """``SIGINT``/``SIGTERM`` on a process of a multi-process ``fit``: the first asks every rank
    to stop before the next step (through the ``Trainer``'s per-step broadcast from rank 0),
    later ones are ignored. :attr:`signum` holds the first."""

    def __init__(self, trainer) -> None:
        super().__init__()
        self.trainer = trainer
        # Lightning's handler broadcasts from inside the handler (a deadlock when the other
        # ranks are in another collective): not installed
        trainer._signal_connector.register_signal_handlers = lambda: None

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            self.trainer._signal_connector.received_sigterm = True


def interrupted(writer, trainer, signum: int) -> int:
    """Rank 0 after every rank stopped on a signal: the last completed step saved."""
    if writer.run.saved_step != writer.step and writer.step > writer.first_step:
        writer.save(trainer)
    run = writer.run
    if run.saved_step == writer.step:
        where = f"checkpoint of step {writer.step} saved in {run.checkpoint_path}"
    else:
        where = "nothing trained yet, nothing saved"
    print(
        f"pyro-discrete fit: interrupted at step {writer.step} on every process; {where}; "
        f"continue with `pyro-discrete fit --out {run.directory} --resume`",
        file=sys.stderr,
    )
    return 128 + signum


def peer_died(rank: int, writer, error: RuntimeError) -> str:
    """The one line for a collective that failed because another process died."""
    if rank != 0:
        first = str(error).strip().splitlines()[0][:120] if str(error).strip() else ""
        return (
            f"the process of rank {rank} stops: another process of the run ended "
            f"({type(error).__name__}: {first})"
        )
    deadline = time.monotonic() + 3.0  # the watcher looks every half second
    while dead_rank() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    what = dead_rank() or f"a collective failed ({str(error).strip()[:120]})"
    saved = writer.run.saved_step
    kept = (
        "no checkpoint was saved" if saved is None else f"the checkpoint of step {saved} is intact"
    )
    return f"{what}; every process is stopped; {kept}; continue with --resume"
