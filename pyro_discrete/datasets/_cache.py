"""Where derived data files (binarisations, decoded arrays) are cached, and how they are written."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from pyro_discrete import _io

__all__ = ["cache_dir", "cache_location", "atomic_torch_save", "file_sha256"]

_ENV = "PYRO_DISCRETE_CACHE"


def cache_dir() -> Path:
    """The cache directory: ``$PYRO_DISCRETE_CACHE`` if set, else ``~/.cache/pyro_discrete``.

    It is created on first use. The environment variable is read on every call so that
    tests and users can redirect the cache without restarting the interpreter.
    """
    path = cache_location()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_location() -> Path:
    """Where :func:`cache_dir` is, without creating it (to name it in error messages)."""
    root = os.environ.get(_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "pyro_discrete"


def atomic_torch_save(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file in the same directory, then rename.

    Several processes (pytest-xdist workers, parallel runs) may fill the same cache entry at
    once; renaming makes each writer's file appear whole or not at all
    (:func:`pyro_discrete._io.atomic_torch_save`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _io.atomic_torch_save(obj, path)


@lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, memoised per (path, size, mtime) within the process."""
    st = os.stat(path)
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns)
