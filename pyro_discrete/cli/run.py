"""A run: its directory, configuration, lock, checkpoint and metrics, in one place.

``fit`` (in one process or through Lightning), ``evaluate`` and ``compare`` see an output
directory only through :class:`Run`:

- :meth:`Run.create` makes a new run (the directory, its lock, ``config.json`` and the
  header of ``metrics.csv``), refusing a directory that holds something else;
- :meth:`Run.resume` locks an existing run and reads it, checking every file before any is
  written: the options given against the run's, every field of the checkpoint
  (:func:`~.checkpoints.check_checkpoint`) and every row of the metrics. The caller then
  restores the checkpoint into its model (which checks every tensor's shape) and only then
  calls :meth:`Run.commit`, which makes the changes a resume needs (the metrics cut back to
  the checkpoint, a longer ``--steps`` in the configuration). A refused resume leaves the
  directory byte for byte as it was;
- :meth:`Run.open` reads a run without locking it (``evaluate``, and the processes of a
  multi-process run other than rank 0);
- :meth:`Run.save` and :meth:`Run.append_metrics` write as training goes, and
  :meth:`Run.write_summary` marks the run finished;
- :meth:`Run.publish` gives ``compare`` an output written whole or not at all: the same
  refusals and the same lock as :meth:`Run.create`, held while the output is built in a
  hidden sibling directory, which then replaces ``--out`` in one rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from pyro_discrete._io import atomic_write_text
from pyro_discrete.diagnostics import elbo_estimate

from . import checkpoints, metrics, rundir
from .errors import CLIError
from .lock import LOCK, RunLock
from .tasks import Task

__all__ = ["Run"]


def _refuse_file(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a directory; choose another --out")


#: what to do about an ``--out`` that is not empty, by command
_NOT_EMPTY_ADVICE = {
    "fit": "pass --resume to continue that run, --overwrite to replace it, or choose "
    "another --out",
    "compare": "pass --overwrite to replace it or choose another --out",
}


def _contents(out: Path) -> list[Path]:
    """What ``out`` holds besides its lock file (an empty list if it does not exist)."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.name != LOCK)


def _refuse_not_empty(out: Path, kind: str) -> None:
    if _contents(out):
        raise CLIError(f"{out} already exists and is not empty; {_NOT_EMPTY_ADVICE[kind]}")


def _clear(out: Path, overwrite: bool) -> None:
    # checked again under the lock: another process may have written since the first check
    if not overwrite:
        _refuse_not_empty(out, "fit")
    for entry in _contents(out):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _make_directory(out: Path) -> list[Path]:
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


def _remove_if_empty(directories: list[Path]) -> None:
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


def _swap_into_place(built: Path, out: Path) -> None:
    """Put the directory ``built`` where ``out`` is, in one rename; the old ``out`` is
    moved aside first and then deleted."""
    os.chmod(built, _published_mode())
    trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    os.replace(out, trash / "old")
    os.replace(built, out)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_orphaned_builds(out: Path) -> None:
    """Delete the hidden build directories of ``out`` left by a process killed mid-build.
    Only for the holder of ``out``'s lock: whoever builds one holds that lock throughout."""
    for orphan in out.parent.glob(f".{out.name}.partial-*"):
        if orphan.is_dir() and not orphan.is_symlink():
            shutil.rmtree(orphan, ignore_errors=True)
            print(
                f"pyro-discrete: removed {orphan}, left by a process killed while writing "
                f"{out}",
                file=sys.stderr,
            )


def _keep_aside(built: Path, out: Path, appeared: list[Path]) -> CLIError:
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


def _check_resume_options(given: Mapping[str, object], config: dict, out: Path) -> None:
    """:raises CLIError: naming every training option given that differs from the run's."""
    differences = [
        f"{rundir.option_flag(key)} {given[key]} (the run has {config[key]})"
        for key in rundir.TRAINING_OPTIONS
        if key in given and given[key] != config[key]
    ]
    if differences:
        raise CLIError(
            f"--resume: {'; '.join(differences)} does not match the run in {out}; a resumed "
            "run keeps the options it was started with: drop them to resume, or start a new "
            "--out"
        )


class Run:
    """A run directory: its configuration, its last checkpoint (``None`` for a new run) and
    the checkpoint this process saved last.

    Build one with :meth:`create`, :meth:`resume` or :meth:`open`.
    """

    def __init__(self, directory: Path, config: dict, checkpoint: dict | None = None) -> None:
        self.directory = Path(directory)
        self.config = config
        self.checkpoint = checkpoint
        #: the step of the checkpoint on disk (``None``: none yet)
        self.saved_step: int | None = None if checkpoint is None else checkpoint["step"]
        self._config_on_disk = config
        self._metrics_kept: str | None = None
        self._committed = checkpoint is None

    # -- paths ---------------------------------------------------------------------------

    @property
    def metrics_path(self) -> Path:
        return self.directory / rundir.METRICS

    @property
    def checkpoint_path(self) -> Path:
        return self.directory / rundir.CHECKPOINT

    @property
    def start_step(self) -> int:
        return 0 if self.checkpoint is None else int(self.checkpoint["step"])

    @property
    def finished(self) -> bool:
        """A resumed run that has nothing left to train and has written its summary."""
        return (
            self.checkpoint is not None
            and self.start_step == self.config["steps"]
            and (self.directory / rundir.SUMMARY).is_file()
        )

    # -- making and reading runs -----------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def create(
        cls, out: Path, config: dict, overwrite: bool, command: str = "pyro-discrete fit"
    ) -> Iterator[Run]:
        """A new run in ``out``, locked for the ``with`` block: ``config.json`` and the
        metrics header written. :raises CLIError: if ``out`` is a file, or a directory that
        is not empty (without ``overwrite``) or in use."""
        out = Path(out)
        _refuse_file(out)
        if not overwrite:
            _refuse_not_empty(out, "fit")
        out.mkdir(parents=True, exist_ok=True)
        with RunLock(out, command):
            _clear(out, overwrite)
            rundir.write_config(out, config)
            metrics.start_metrics(out / rundir.METRICS)
            yield cls(out, config)

    @staticmethod
    @contextlib.contextmanager
    def publish(
        out: Path, overwrite: bool, command: str = "pyro-discrete compare"
    ) -> Iterator[Path]:
        """An output written whole or not at all (``compare``'s report): a hidden sibling
        directory of ``out`` to write into during the ``with`` block, which then replaces
        ``out`` in one rename (with ``overwrite``, the old ``out`` is moved aside, then
        deleted). If the block raises, the hidden directory is deleted, and ``out`` and the
        directories made for it are left or removed so that nothing is changed.

        ``out`` is refused as by :meth:`create` (a file; not empty without ``overwrite``;
        in use), then made if missing and locked for the whole block, so that no ``fit`` or
        other ``compare`` writes it meanwhile. Hidden directories that killed processes left
        for ``out`` are removed under the lock. Files that appear in ``out`` while the block
        runs are never deleted without ``overwrite``: the output is then moved beside
        ``out`` and a :class:`CLIError` says where.
        """
        out = Path(out)
        _refuse_file(out)
        if not overwrite:
            _refuse_not_empty(out, "compare")
        made = _make_directory(out)
        try:
            with RunLock(out, command):
                if not overwrite:
                    _refuse_not_empty(out, "compare")  # again, under the lock
                _remove_orphaned_builds(out)
                built = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
                try:
                    yield built
                    appeared = [] if overwrite else _contents(out)
                    if appeared:
                        raise _keep_aside(built, out, appeared)
                    _swap_into_place(built, out)
                finally:
                    if built.exists():
                        shutil.rmtree(built, ignore_errors=True)
        except BaseException:
            _remove_if_empty(made)
            raise

    @classmethod
    @contextlib.contextmanager
    def resume(
        cls,
        out: Path,
        given: Mapping[str, object],
        steps: int | None,
        updates: Mapping[str, object],
        command: str = "pyro-discrete fit --resume",
    ) -> Iterator[Run]:
        """The run in ``out``, locked for the ``with`` block and checked (see :meth:`open`);
        nothing is written until :meth:`commit`."""
        out = Path(out)
        _refuse_file(out)
        if not (out / rundir.CONFIG).is_file():
            rundir.read_config(out)  # the message for a directory that is no run
        with RunLock(out, command):
            yield cls.open(out, given, steps, updates, with_metrics=True)

    @classmethod
    def open(
        cls,
        out: Path,
        given: Mapping[str, object] | None = None,
        steps: int | None = None,
        updates: Mapping[str, object] | None = None,
        with_metrics: bool = False,
    ) -> Run:
        """The run in ``out``, read and checked, not locked, nothing written.

        :param given: training options given on the command line: each must equal the run's.
        :param steps: the step to train to (default the run's); not below the checkpoint's.
        :param updates: other entries of the configuration this session changes (device;
            ``None`` removes an entry).
        :param with_metrics: also check ``metrics.csv`` (a resume rewrites it; ``evaluate``
            does not read it).
        :raises CLIError: naming the file and the problem.
        """
        out = Path(out)
        config = rundir.read_config(out)
        _check_resume_options(given or {}, config, out)
        checkpoint = checkpoints.load_checkpoint(out)
        checkpoints.check_checkpoint(checkpoint, config, out)
        target = config["steps"] if steps is None else steps
        if target < checkpoint["step"]:
            raise CLIError(f"--steps {target} is below the checkpoint's step {checkpoint['step']}")
        # an update of None removes the entry (a multi-process run's "parallel" options)
        updated = {**config, "steps": target, **(updates or {})}
        updated = {key: value for key, value in updated.items() if value is not None}
        run = cls(out, updated, checkpoint)
        run._config_on_disk = config
        if with_metrics:
            run._metrics_kept = metrics.kept_rows(out / rundir.METRICS, checkpoint["step"])
        return run

    def commit(self) -> None:
        """Make the directory the resumed run's, once the checkpoint has been restored: the
        files left by a process killed mid-write removed, the metrics cut back to the
        checkpoint, the summary of a run trained further removed, the configuration updated.
        Only the lock's holder may call it."""
        if self._committed:
            return
        self._committed = True
        for orphan in rundir.remove_orphaned_temporaries(self.directory):
            print(
                f"pyro-discrete: removed {orphan.name}, left by a process killed while writing",
                file=sys.stderr,
            )
        if self._metrics_kept is None:
            metrics.truncate_metrics(self.metrics_path, self.start_step)  # says it is missing
        elif self._metrics_kept != self.metrics_path.read_text(encoding="utf-8", errors="replace"):
            atomic_write_text(self.metrics_path, self._metrics_kept)
        if self.start_step < self.config["steps"]:
            (self.directory / rundir.SUMMARY).unlink(missing_ok=True)  # unfinished again
        if self.config != self._config_on_disk:
            rundir.write_config(self.directory, self.config)
            self._config_on_disk = self.config

    def say_finished(self) -> None:
        """Say that a resumed run has nothing left to train (``fit --resume`` of a finished
        run, on one process or several)."""
        print(
            f"pyro-discrete fit: the run in {self.directory} already finished at step "
            f"{self.start_step}; nothing to do (pass a larger --steps to continue it)",
            file=sys.stderr,
        )

    # -- writing as training goes --------------------------------------------------------

    def append_metrics(self, history: list[dict]) -> None:
        """Append and flush ``history``'s rows, then clear it."""
        metrics.append_rows(self.metrics_path, history)
        history.clear()

    def save(self, checkpoint: dict) -> None:
        """Replace ``checkpoint.pt`` atomically by ``checkpoint``
        (:func:`~.checkpoints.make_checkpoint`).

        :raises CLIError: when it cannot be written, saying which checkpoint is intact.
        """
        step = checkpoint["step"]
        try:
            checkpoints.save_checkpoint(self.directory, checkpoint)
        except OSError as e:
            kept = (
                "no checkpoint was written before"
                if self.saved_step is None
                else f"the checkpoint of step {self.saved_step} is intact"
            )
            raise CLIError(
                f"cannot write {self.checkpoint_path} at step {step}: "
                f"{e.strerror or e}; {kept}: free space or make {self.directory} writable, "
                "then continue with --resume"
            ) from None
        self.saved_step = step

    def write_summary(self, summary: dict) -> None:
        """``summary.json``, written last: it marks the run finished."""
        atomic_write_text(self.directory / rundir.SUMMARY, json.dumps(summary, indent=2) + "\n")

    def summarise(
        self, state, task: Task, examples: int, device: torch.device, **extra: object
    ) -> dict:
        """Write ``summary.json``: the steps, the training time and a validation ELBO; ``extra``
        entries are added (the multi-process path's). ``state`` needs ``step``,
        ``train_time``, ``model`` and ``step_choice``."""
        valid_args = task.args(task.split_rows("valid")[:examples].to(device))
        summary = {
            "complete": True,
            "step_kind": state.step_choice.description,
            "step": state.step,
            "train_time_s": round(state.train_time, 2),
            "steps_per_s": round(state.step / state.train_time, 2) if state.train_time else None,
            "valid_elbo": elbo_estimate(state.model.model, state.model.guide, *valid_args),
            "valid_examples": int(valid_args[0].shape[0]),
            **extra,
        }
        self.write_summary(summary)
        print(
            f"valid ELBO {summary['valid_elbo']:.2f} nats ({summary['valid_examples']} examples, "
            f"one sample each); run saved in {self.directory}"
        )
        return summary
