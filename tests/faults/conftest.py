"""Fixtures of the fault suite: tiny real runs, a straight reference, fault injection."""

from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path

import pyro
import pytest
from cli_support import fit


@pytest.fixture(autouse=True)
def isolate(data_cache):
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def straight(tmp_path_factory, data_cache) -> Path:
    """The reference run, uninterrupted: what every fault followed by --resume must equal."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert fit(out) == 0
    return out


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(directory)``: writes under ``directory`` fail with EROFS from then on.

    The tests run as root, whom ``chmod`` does not stop, so the error is injected where
    Python asks the operating system to create, open for writing, link or rename a file.
    """

    def protect(root: Path) -> None:
        root = Path(root).resolve()

        def guard(path, writing) -> None:
            if writing and Path(os.fsdecode(path)).resolve().is_relative_to(root):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

        real_open, real_os_open = io.open, os.open
        real_mkdir, real_link, real_replace = os.mkdir, os.link, os.replace

        def fake_open(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)):
                guard(file, any(c in mode for c in "wax+"))
            return real_open(file, mode, *args, **kwargs)

        def fake_os_open(path, flags, *args, **kwargs):
            guard(path, flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            return real_os_open(path, flags, *args, **kwargs)

        def fake_mkdir(path, *args, **kwargs):
            guard(path, True)
            return real_mkdir(path, *args, **kwargs)

        def fake_link(src, dst, *args, **kwargs):
            guard(dst, True)
            return real_link(src, dst, *args, **kwargs)

        def fake_replace(src, dst, *args, **kwargs):
            guard(dst, True)
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "open", fake_os_open)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)
        monkeypatch.setattr(os, "link", fake_link)
        monkeypatch.setattr(os, "replace", fake_replace)

    return protect
