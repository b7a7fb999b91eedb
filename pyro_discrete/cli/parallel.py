r"""``pyro-discrete fit --devices N [--num-nodes M] [--strategy ddp]``: the same run on
several processes, GPUs or machines, trained by Lightning's ``Trainer``.

The run directory is the single-process one (:mod:`~pyro_discrete.cli.rundir`): the same
``config.json`` (with the options of this module recorded under ``"parallel"``), the same
``metrics.csv`` and the same ``checkpoint.pt``, so that ``fit --resume`` continues a run on
any number of processes, ``evaluate`` reads it, and a run started on one process resumes
on several. :mod:`~pyro_discrete.cli.parallel_state` converts the param store and the
Adam moments between Lightning and the checkpoint; the data position is converted here:
the minibatches of ``--batch-size`` consumed so far, :math:`t \times W` after :math:`t`
steps on :math:`W` processes, as a position of the single-process loader. A multi-process
run draws its shards from its own shuffle (Lightning's ``DistributedSampler``), so the
order of examples, though not their count, changes with the number of processes.

Under ``--strategy ddp`` Lightning starts processes 1 to W-1 by running the same command
again; those (and every process but global rank 0 under ``torchrun`` or a cluster
scheduler) only read the run directory. Rank 0 holds the directory's lock, writes the
configuration, the metrics rows and the checkpoints, and evaluates the result.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from types import SimpleNamespace

import lightning.pytorch as pl
import lightning.pytorch.strategies.launchers.subprocess_script as subprocess_launcher
import pyro
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader

from . import checkpoints
from .errors import CLIError
from .options import FitOptions
from .parallel_state import ADAM_BETAS, CheckpointedModule, RowDataset, optimizer_state
from .ranks import RankStop, interrupted, peer_died, watch_children
from .run import Run
from .tasks import Task, check_batch_size, make_elbo, make_task
from .training import EMA

__all__ = ["PARALLEL", "cmd_fit_parallel", "parallel_options"]

#: the key of ``config.json`` recording how the run was last trained in parallel
PARALLEL = "parallel"


def parallel_options(options: FitOptions) -> dict:
    """The options of this module, as recorded in ``config.json``."""
    return {
        "devices": options.devices,
        "num_nodes": options.num_nodes,
        "accelerator": options.accelerator,
        "strategy": options.strategy or "ddp",
    }


def _global_rank(options: FitOptions) -> int:
    """This process's rank, known before the ``Trainer`` exists: Lightning's launcher,
    ``torchrun`` and SLURM set it in the environment; the launching process is rank 0."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    return node * options.devices + int(os.environ.get("LOCAL_RANK", 0))


class _RunDirectory(Callback):
    """Rank 0's writer: metrics rows every ``log_every`` steps, a checkpoint every
    ``checkpoint_every`` steps and at the end, both in the single-process formats, through
    the :class:`~pyro_discrete.cli.run.Run` (committed, for a resumed run, once the
    checkpoint has been restored on every process)."""

    def __init__(
        self, run: Run, writes: bool, options: FitOptions, task: Task, model: torch.nn.Module
    ) -> None:
        self.run, self.writes, self.options = run, writes, options
        self.task, self.model, self.config = task, model, run.config
        checkpoint = run.checkpoint
        self.step = 0 if checkpoint is None else int(checkpoint["step"])
        self.first_step = self.step
        self.elapsed = 0.0 if checkpoint is None else float(checkpoint["elapsed"])
        self.excluded = 0.0 if checkpoint is None else float(checkpoint["excluded"])
        self.ema, self.smoothed = EMA(), float("nan")
        if checkpoint is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])
            self.smoothed = checkpoint["smoothed"]
        self.history: list[dict] = []
        self.first_train_time = self.elapsed - self.excluded  # of the processes before
        self._clock = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._clock = time.perf_counter() - self.elapsed

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.step += 1
        self.elapsed = time.perf_counter() - self._clock
        loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
        if not math.isfinite(loss):  # each process its own: Lightning then stops the others
            raise FloatingPointError(
                f"{self.config['estimator']}: loss became {loss} at step {self.step} on "
                f"process {trainer.global_rank}"
            )
        if trainer.global_rank != 0 or not self.writes:
            return
        self.run.commit()  # the checkpoint restored on every process: now the files change
        self.smoothed = -self.ema.update(loss / batch.shape[0])
        last = self.step == self.config["steps"]
        if self.step % self.options.log_every == 0 or last:
            train_time = self.elapsed - self.excluded
            self.history.append(
                {"step": self.step, "wall_time_s": train_time, "train_elbo_ema": self.smoothed}
            )
        t0 = time.perf_counter()
        if self.step % self.options.checkpoint_every == 0 or last:
            self.save(trainer)
        elif self.history:
            self.run.append_metrics(self.history)
        self.excluded += time.perf_counter() - t0

    def save(self, trainer) -> None:
        self.run.append_metrics(self.history)
        batches = len(self.task.loader(self.config["batch_size"], self.config["seed"], "cpu"))
        consumed = self.step * trainer.world_size  # minibatches of --batch-size seen
        self.run.save(
            checkpoints.make_checkpoint(
                self.config,
                step=self.step,
                elapsed=self.elapsed,
                excluded=self.excluded,
                model=self.model,
                optim=optimizer_state(trainer.optimizers[0]),
                loader={
                    "epoch": consumed // batches,
                    "position": consumed % batches,
                    "seed": self.config["seed"],
                },
                ema=self.ema.state_dict(),
                smoothed=self.smoothed,
            )
        )


def _train(options: FitOptions, run: Run, task: Task, rank: int) -> int:
    """Train the run to its steps; ``run`` is read-only on every rank but 0."""
    config, checkpoint = run.config, run.checkpoint
    pyro.clear_param_store()
    pyro.set_rng_seed(config["seed"])  # the same initial parameters on every process
    model = task.build_model()
    if checkpoint is not None:
        checkpoints.load_model_state(model, checkpoint["model"], run.directory, config["model"])
    start = run.start_step
    if start >= config["steps"]:
        if rank == 0:  # trained to its end by a run stopped before its summary: write it
            train_time = float(checkpoint["elapsed"]) - float(checkpoint["excluded"])
            _summarise(run, task, model, start, train_time, options.eval_examples)
        return 0
    rows = task.train if task.train_probs is None else task.train_probs
    dataset = RowDataset(rows, binarise_on_access=task.train_probs is not None)
    batch_size = config["batch_size"]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    module = CheckpointedModule(
        model.model,
        model.guide,
        make_elbo(config["estimator"]),
        next(iter(DataLoader(dataset, batch_size=batch_size))),
        lr=config["lr"],
        control_variate_lr_factor=config["cv_lr_factor"],
        optimizer_options={"betas": ADAM_BETAS},
        seed=config["seed"],
        batch_to_args=lambda batch: (task.args(batch), {}),
        checkpoint=checkpoint,
    )
    writer = _RunDirectory(run, rank == 0, options, task, model)
    parallel = parallel_options(options)
    trainer = pl.Trainer(
        max_steps=config["steps"] - start,
        max_epochs=-1,
        devices=parallel["devices"],
        num_nodes=parallel["num_nodes"],
        accelerator=parallel["accelerator"],
        strategy=parallel["strategy"],
        callbacks=[writer],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=options.progress and rank == 0,
        default_root_dir=str(run.directory),
    )
    if rank == 0:
        print(
            f"fit: {config['model']} with {config['estimator']} on {task.data_name}, steps "
            f"{start} -> {config['steps']} on {trainer.world_size} process(es), output "
            f"{run.directory}",
            file=sys.stderr,
        )
    if rank == 0:  # Lightning starts ranks 1 to W-1 as children of this process
        subprocess_launcher._launch_process_observer = watch_children
    stop = RankStop(trainer)
    try:
        with stop:
            trainer.fit(module, loader)
    except SIGTERMException:
        if rank != 0:
            return 0  # stopped with rank 0, which saves and reports
        return interrupted(writer, trainer, stop.signum or signal.SIGTERM)
    except RuntimeError as e:  # a collective failed: a peer process died
        raise CLIError(peer_died(rank, writer, e)) from None
    if trainer.global_rank != 0:
        return 0
    train_time = writer.elapsed - writer.excluded
    examples = (writer.step - writer.first_step) * batch_size * trainer.world_size
    this_session = train_time - writer.first_train_time
    _summarise(
        run,
        task,
        model,
        writer.step,
        train_time,
        options.eval_examples,
        processes=trainer.world_size,
        examples_per_s=round(examples / this_session, 1) if this_session > 0 else None,
    )
    return 0


def _summarise(
    run: Run,
    task: Task,
    model,
    step: int,
    train_time: float,
    eval_examples: int,
    processes: int | None = None,
    **extra: object,
) -> None:
    """``summary.json`` of a multi-process run, evaluated on the CPU by rank 0;
    ``processes``: how many trained this session (``None`` where none did)."""
    on = f"on {processes} process(es) " if processes else ""
    kind = SimpleNamespace(description=f"eager step, data-parallel {on}through Lightning")
    model = model.to("cpu")
    done = SimpleNamespace(step=step, train_time=train_time, model=model, step_choice=kind)
    if processes:
        extra = {"processes": processes, **extra}
    run.summarise(done, task, eval_examples, torch.device("cpu"), **extra)


def _task(run: Run) -> Task:
    config = run.config
    return make_task(config["model"], config["data"], config["binarization"], config["seed"])


def cmd_fit_parallel(options: FitOptions) -> int:
    """``fit`` through Lightning's ``Trainer`` on ``--devices`` × ``--num-nodes`` processes."""
    if options.device != "cpu":
        raise CLIError("--device does not apply with --devices/--strategy: use --accelerator")
    if options.compile == "on":
        raise CLIError(
            "--compile on does not apply with --devices/--strategy: the data-parallel path "
            "trains with the eager step (see docs/data_parallel.md); drop --compile"
        )
    rank = _global_rank(options)
    updates = {"device": options.accelerator, PARALLEL: parallel_options(options)}
    if rank != 0:  # started by rank 0 (or a scheduler): read, never write, the directory
        if options.resume:
            run = Run.open(options.out, options.given, options.steps, updates)
        else:
            config = options.new_run_config(options.accelerator)
            run = Run(options.out, {**config, PARALLEL: parallel_options(options)})
        return _train(options, run, _task(run), rank)
    if options.resume:
        with Run.resume(options.out, options.given, options.steps, updates) as run:
            if run.finished:
                run.say_finished()
                return 0
            return _train(options, run, _task(run), rank)
    config = {**options.new_run_config(options.accelerator), PARALLEL: parallel_options(options)}
    task = make_task(config["model"], config["data"], config["binarization"], config["seed"])
    check_batch_size(config["batch_size"], task)
    with Run.create(options.out, config, options.overwrite) as run:
        return _train(options, run, task, rank)
