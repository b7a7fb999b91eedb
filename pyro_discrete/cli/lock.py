"""An advisory lock on a run directory, so that two processes never write one run.

The lock is the kernel's: an exclusive :func:`fcntl.flock` on a small file in the directory,
which the kernel releases when its owner exits, however it exits (``SIGKILL`` included), so
a pid that was recycled can never look like a live owner. The file also records who holds it
(pid, host, command, start time) so that whoever finds it taken is told by whom. A file left
behind by an owner that died is taken over with a message saying what it held; a record
written on another host is respected (``flock`` does not reach across machines on every
network file system), and the message says how to remove it if that run is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import CLIError

__all__ = ["LOCK", "RunLock", "lock_owner"]

LOCK = ".pyro-discrete.lock"


def lock_owner(path: Path) -> dict | None:
    """The owner recorded in the lock file ``path``; ``None`` if there is none, ``{}`` if
    the file holds something that is not an owner record."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict) -> str:
    return (
        f"pid {owner.get('pid')} on host {owner.get('host')} "
        f"(`{owner.get('command', '?')}`, since {owner.get('since', '?')})"
    )


def _what_is_there(text: str) -> str:
    """What a lock file that holds no owner record holds, for the take-over message."""
    if not text.strip():
        return "an empty lock file"
    return f"a lock file that holds no owner record ({text.strip()[:40]!r})"


class RunLock:
    """Advisory lock on a directory for the life of a ``with`` block.

    :param directory: the directory to lock; it must exist.
    :param command: what the owner is doing, shown to whoever finds the lock taken.
    :raises CLIError: if another live process holds the lock (naming its pid and host).
    """

    def __init__(self, directory: Path, command: str) -> None:
        self.path = Path(directory) / LOCK
        self.command = command
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _record(self) -> str:
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        return json.dumps(owner) + "\n"

    def _open_locked(self) -> int | None:
        """A descriptor of the lock file, exclusively locked; ``None`` if a live process
        holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            # the owner before us may have removed the file between our open and our lock:
            # then we hold a lock on a file nobody else can see, and must open it again
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def acquire(self) -> RunLock:
        if self.held:
            raise CLIError(f"{self.path.parent} is already locked by this process")
        fd = self._open_locked()
        if fd is None:
            owner = lock_owner(self.path) or {}
            raise CLIError(
                f"{self.path.parent} is in use by {_describe(owner)}; wait for it to "
                f"finish or stop it"
            )
        try:
            left = os.read(fd, 4096).decode("utf-8", errors="replace")
            self._take_over(left)
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, self._record().encode("utf-8"))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _take_over(self, left: str) -> None:
        """Say what a lock file left by a process that is gone held (nothing if empty).

        :raises CLIError: for the record of an owner on another host, which this host's
            lock cannot tell alive or dead.
        """
        if not left:
            return  # a new file
        try:
            owner = json.loads(left)
        except ValueError:
            owner = None
        if not isinstance(owner, dict) or "pid" not in owner:
            print(
                f"pyro-discrete: taking over the stale lock {self.path}: "
                f"{_what_is_there(left)}, which no running process holds",
                file=sys.stderr,
            )
            return
        if owner.get("host") != socket.gethostname():
            raise CLIError(
                f"{self.path.parent} is in use by {_describe(owner)}, which cannot be "
                f"checked from this host; wait for it to finish or stop it (if it is gone, "
                f"delete {self.path})"
            )
        print(
            f"pyro-discrete: taking over the stale lock of {_describe(owner)}, which is "
            "no longer running",
            file=sys.stderr,
        )

    def release(self) -> None:
        if self._fd is None:
            return
        # removed while still locked, so that no process finds a leftover file to take over;
        # only if it is still ours: the directory may have been replaced by a new one
        # (Run.publish) whose lock file another process holds
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(self._fd), os.stat(self.path)):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
