"""An advisory lock on a run directory, so that two processes never write one run.

The lock is a small JSON file (owner's pid, host, command and start time) created with an
atomic *create-if-absent*: its contents are written to a temporary file, which is then
hard-linked to the lock's name (:func:`os.link` fails if the name exists), so the lock file
is never seen half-written. A lock whose owner has died (same host, pid no longer running,
or running but started at another time, i.e. a recycled pid) is stale and taken over with a
message; a live owner, or one on another host that cannot be checked, is reported with
its pid, and nothing is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import CLIError

__all__ = ["LOCK", "RunLock", "lock_owner"]

LOCK = ".pyro-discrete.lock"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), which tells a recycled pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # fields after the parenthesised command name; starttime is field 22 (index 19 here)
    return stat.rsplit(")", 1)[-1].split()[19]


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def lock_owner(path: Path) -> dict | None:
    """The owner recorded in the lock file ``path``; ``None`` if there is none."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: written by something else, treated as stale below


def _is_stale(owner: dict) -> bool:
    if not isinstance(owner.get("pid"), int):
        return True
    if owner.get("host") != socket.gethostname():
        return False  # cannot be checked from here
    if not _is_running(owner["pid"]):
        return True
    start = owner.get("start")
    return start is not None and _process_start(owner["pid"]) not in (None, start)


def _describe(owner: dict) -> str:
    return (
        f"pid {owner.get('pid')} on host {owner.get('host')} "
        f"(`{owner.get('command', '?')}`, since {owner.get('since', '?')})"
    )


class RunLock:
    """Advisory lock on a directory for the life of a ``with`` block.

    :param directory: the directory to lock; it must exist.
    :param command: what the owner is doing, shown to whoever finds the lock taken.
    :param name: the lock file's name inside ``directory``.
    :raises CLIError: if another live process holds the lock (naming its pid and host).
    """

    def __init__(self, directory: Path, command: str, name: str = LOCK) -> None:
        self.path = Path(directory) / name
        self.command = command
        self.held = False

    def _record(self) -> str:
        return (
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "start": _process_start(os.getpid()),
                    "command": self.command,
                    "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                }
            )
            + "\n"
        )

    def _try_create(self) -> bool:
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(self._record())
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> RunLock:
        for _ in range(3):  # a racing process may take over the same stale lock first
            if self._try_create():
                self.held = True
                return self
            owner = lock_owner(self.path)
            if owner is None:
                continue  # released between our attempt and the read
            if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                raise CLIError(f"{self.path.parent} is already locked by this process")
            if not _is_stale(owner):
                raise CLIError(
                    f"{self.path.parent} is in use by {_describe(owner)}; wait for it to "
                    f"finish or stop it (if it is gone, delete {self.path})"
                )
            print(
                f"pyro-discrete: taking over the stale lock of {_describe(owner)}, which is "
                "no longer running",
                file=sys.stderr,
            )
            self._discard(owner)
        raise CLIError(f"could not lock {self.path.parent}: other processes keep taking it")

    def _discard(self, stale: dict) -> None:
        # Renaming is atomic, so of several processes taking over one stale lock only one
        # moves it; a lock that turns out not to be the stale one (another process's fresh
        # lock, created in between) is put back.
        grave = self.path.with_name(f"{self.path.name}.{os.getpid()}.stale")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        if lock_owner(grave) != stale:
            with contextlib.suppress(FileExistsError):
                os.link(grave, self.path)
        grave.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            owner = lock_owner(self.path)
            if owner and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
