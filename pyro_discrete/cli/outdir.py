"""An output directory's life on disk, for :class:`~pyro_discrete.cli.run.Run` (its only
user): what ``--out`` may be, how a new one is made, cleared, or replaced in one rename, and
what is done with what a killed process left beside it. The lock, the configuration and the
order of these steps are :class:`~pyro_discrete.cli.run.Run`'s.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import CLIError
from .lock import LOCK

__all__ = [
    "clear",
    "contents",
    "discard",
    "keep_aside",
    "make_directory",
    "new_build",
    "refuse_file",
    "refuse_not_empty",
    "remove_if_empty",
    "remove_orphaned_builds",
    "swap_into_place",
]


def refuse_file(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a directory; choose another --out")


#: what to do about an ``--out`` that is not empty, by command
_NOT_EMPTY_ADVICE = {
    "fit": "pass --resume to continue that run, --overwrite to replace it, or choose "
    "another --out",
    "compare": "pass --overwrite to replace it or choose another --out",
}


def contents(out: Path) -> list[Path]:
    """What ``out`` holds besides its lock file (an empty list if it does not exist)."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.name != LOCK)


def refuse_not_empty(out: Path, kind: str) -> None:
    if contents(out):
        raise CLIError(f"{out} already exists and is not empty; {_NOT_EMPTY_ADVICE[kind]}")


def clear(out: Path, overwrite: bool) -> None:
    # checked again under the lock: another process may have written since the first check
    if not overwrite:
        refuse_not_empty(out, "fit")
    for entry in contents(out):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def make_directory(out: Path) -> list[Path]:
    """Create ``out`` and its missing parents; the directories this call created, innermost
    first (empty if ``out`` existed)."""
    missing = [d for d in (out, *out.parents) if not d.exists()]
    made = []
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue  # made by another process meanwhile: not ours to remove
        made.append(directory)
    return made[::-1]


def remove_if_empty(directories: list[Path]) -> None:
    """Remove the directories a failed command created (innermost first), where they are
    still empty: a directory that another process has written into meanwhile stays."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


def _published_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask  # mkdtemp's 0700 is for the unfinished state only


def swap_into_place(built: Path, out: Path) -> None:
    """Put the directory ``built`` where ``out`` is, in one rename; the old ``out`` is
    moved aside first and then deleted."""
    os.chmod(built, _published_mode())
    trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    os.replace(out, trash / "old")
    os.replace(built, out)
    shutil.rmtree(trash, ignore_errors=True)


def _build_prefix(out: Path) -> str:
    return f".{out.name}.partial-"


def new_build(out: Path) -> Path:
    """A new hidden sibling directory of ``out`` to build its replacement in."""
    return Path(tempfile.mkdtemp(dir=out.parent, prefix=_build_prefix(out)))


def discard(built: Path) -> None:
    """Delete a build directory that was not put in place (nothing if it was)."""
    if built.exists():
        shutil.rmtree(built, ignore_errors=True)


def remove_orphaned_builds(out: Path) -> None:
    """Delete the hidden build directories of ``out`` left by a process killed mid-build.
    Only for the holder of ``out``'s lock: whoever builds one holds that lock throughout."""
    for orphan in out.parent.glob(_build_prefix(out) + "*"):
        if orphan.is_dir() and not orphan.is_symlink():
            shutil.rmtree(orphan, ignore_errors=True)
            print(
                f"pyro-discrete: removed {orphan}, left by a process killed while writing "
                f"{out}",
                file=sys.stderr,
            )


def keep_aside(built: Path, out: Path, appeared: list[Path]) -> CLIError:
    """A finished output that may not replace ``out`` (files appeared in it while it was
    built, and ``--overwrite`` was not given), moved to a visible sibling; the error that
    says where."""
    kept = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{out.name}-"))
    os.replace(built, kept)  # a directory may replace an empty one
    os.chmod(kept, _published_mode())
    names = ", ".join(p.name for p in appeared[:3]) + (" ..." if len(appeared) > 3 else "")
    return CLIError(
        f"{out} is not empty any more ({names} appeared in it while the output was written) "
        f"and --overwrite was not given, so nothing in it was replaced: the output is in "
        f"{kept} instead; move it where you want it"
    )
