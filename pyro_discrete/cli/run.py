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

The files are :mod:`~pyro_discrete.cli.rundir`'s, :mod:`~pyro_discrete.cli.checkpoints`'s and
:mod:`~pyro_discrete.cli.metrics`'s; the directory's operations on disk (made, cleared,
replaced) :mod:`~pyro_discrete.cli.outdir`'s; the lock :mod:`~pyro_discrete.cli.lock`'s.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from pyro_discrete._io import atomic_write_text
from pyro_discrete.diagnostics import elbo_estimate

from . import checkpoints, metrics, outdir, rundir
from .errors import CLIError
from .lock import RunLock
from .tasks import Task

__all__ = ["Run"]


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
        outdir.refuse_file(out)
        if not overwrite:
            outdir.refuse_not_empty(out, "fit")
        out.mkdir(parents=True, exist_ok=True)
        with RunLock(out, command):
            outdir.clear(out, overwrite)
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
        outdir.refuse_file(out)
        if not overwrite:
            outdir.refuse_not_empty(out, "compare")
        made = outdir.make_directory(out)
        try:
            with RunLock(out, command):
                if not overwrite:
                    outdir.refuse_not_empty(out, "compare")  # again, under the lock
                outdir.remove_orphaned_builds(out)
                built = outdir.new_build(out)
                try:
                    yield built
                    appeared = [] if overwrite else outdir.contents(out)
                    if appeared:
                        raise outdir.keep_aside(built, out, appeared)
                    outdir.swap_into_place(built, out)
                finally:
                    outdir.discard(built)
        except BaseException:
            outdir.remove_if_empty(made)
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
        outdir.refuse_file(out)
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
        rundir.check_resume_options(given or {}, config, out)
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
