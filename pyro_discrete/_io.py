"""Atomic file writes: a file appears whole, with its new contents, or not at all.

Every file the package writes for the user (checkpoints, run configurations, reports, the
data cache) goes through :func:`atomic_write`: the bytes go to a temporary file in the
target's own directory (so that the final rename never crosses a file system), are flushed
to the disk with ``fsync``, and the temporary file is renamed over the target with
:func:`os.replace`, which POSIX and Windows make atomic. A write that fails or is interrupted
removes its temporary file and leaves the previous version of the target untouched; a
process killed outright (``SIGKILL``, power loss) can leave a ``<name>.<random>.tmp`` file
beside the target, which :func:`orphaned_temporaries` finds.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

__all__ = ["atomic_write", "atomic_write_text", "atomic_torch_save", "orphaned_temporaries"]


def _temporary_beside(path: Path) -> tuple[int, str]:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    # mkstemp creates files readable by the owner only; give them the permissions a plain
    # open() would (0666 less the umask), since run directories are meant to be shared
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def _fsync_directory(directory: Path) -> None:
    # the rename is durable only once the directory entry itself reaches the disk
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Replace ``path`` by what ``write(file)`` writes to a binary file, atomically.

    :param path: the target; its directory must exist.
    :param write: called once with a file object open for binary writing.
    :raises OSError: if the directory cannot be written (read-only, full); the target is
        then unchanged and no temporary file is left.
    """
    path = Path(path)
    fd, tmp = _temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:
            # a failed write() names no file; the caller's message should
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of ``text`` encoded as UTF-8."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """:func:`torch.save` through :func:`atomic_write`.

    The object is serialised in memory first, so that a failing disk raises Python's
    ``OSError`` (naming the file and the reason) rather than torch's internal
    ``enforce fail at inline_container.cc``.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def orphaned_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files that an :func:`atomic_write` of ``path`` killed mid-write left behind."""
    path = Path(path)
    return sorted(path.parent.glob(f"{path.name}.*.tmp"))
