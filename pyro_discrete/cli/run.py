"""A run: its directory, configuration, lock, checkpoint and metrics, in one place.

``fit`` (in one process or through Lightning) and ``evaluate`` see a run directory only
through :class:`Run`:

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
  :meth:`Run.write_summary` marks the run finished.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
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


def _clear(out: Path, overwrite: bool) -> None:
    # checked again under the lock: another process may have written since the first check
    entries = [p for p in out.iterdir() if p.name != LOCK]
    if entries and not overwrite:
        raise CLIError(
            f"{out} already exists and is not empty; pass --resume to continue that run, "
            "--overwrite to replace it, or choose another --out"
        )
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


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
        if out.exists() and not overwrite:
            _clear(out, overwrite=False)  # refuses a directory that is not empty
        out.mkdir(parents=True, exist_ok=True)
        with RunLock(out, command):
            _clear(out, overwrite)
            rundir.write_config(out, config)
            metrics.start_metrics(out / rundir.METRICS)
            yield cls(out, config)

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
