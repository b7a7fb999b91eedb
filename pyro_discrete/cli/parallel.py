r"""``pyro-discrete fit --devices N [--num-nodes M] [--strategy ddp]``: the same run on
several processes, GPUs or machines, trained by Lightning's ``Trainer``.

The run directory is the single-process one (:mod:`~pyro_discrete.cli.rundir`): the same
``config.json`` (with the options of this module recorded under ``"parallel"``), the same
``metrics.csv`` and the same ``checkpoint.pt``, so that ``fit --resume`` continues a run on
any number of processes, ``evaluate`` reads it, and a run started on one process resumes
on several. The conversion between Lightning's training state and the checkpoint is:

- parameters, control-variate parameters and running statistics: Pyro's param store
  (identical on every process: DDP averages the gradients, running statistics are
  averaged every step by :class:`~pyro_discrete.lightning.DiscreteSVIModule`);
- optimizer: the per-parameter Adam moments of the ``torch.optim.Adam`` Lightning steps,
  keyed by param-store name as :class:`~pyro_discrete.optim.MultiTensorAdam` keys them;
- data position: the minibatches of ``--batch-size`` consumed so far,
  :math:`t \times W` after :math:`t` steps on :math:`W` processes, as a position of the
  single-process loader; a multi-process run draws its shards from its own shuffle
  (Lightning's ``DistributedSampler``), so the order of examples, though not their count,
  changes with the number of processes.

Under ``--strategy ddp`` Lightning starts processes 1 to W-1 by running the same command
again; those (and every process but global rank 0 under ``torchrun`` or a cluster
scheduler) only read the run directory. Rank 0 holds the directory's lock, writes the
configuration, the metrics rows and the checkpoints, and evaluates the result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pyro
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

from pyro_discrete._io import atomic_write_text
from pyro_discrete.lightning import DiscreteSVIModule, load_param_store_state, rank_seed

from . import metrics, rundir
from .errors import CLIError
from .fit import NEW_RUN_DEFAULTS, _clear_for_new_run, _summarise, resume_point
from .lock import RunLock
from .tasks import Task, check_model_name, make_elbo, make_task
from .training import EMA

__all__ = ["PARALLEL", "cmd_fit_parallel", "parallel_options"]

#: the key of ``config.json`` recording how the run was last trained in parallel
PARALLEL = "parallel"
#: Adam's moments as the single-process optimizer keeps them (see ``tasks.make_optimizer``)
_BETAS = (0.9, 0.99999)


def parallel_options(args: argparse.Namespace) -> dict:
    """The options of this module, as recorded in ``config.json``."""
    return {
        "devices": args.devices,
        "num_nodes": args.num_nodes,
        "accelerator": args.accelerator,
        "strategy": args.strategy or "ddp",
    }


def _global_rank(args: argparse.Namespace) -> int:
    """This process's rank, known before the ``Trainer`` exists: Lightning's launcher,
    ``torchrun`` and SLURM set it in the environment; the launching process is rank 0."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    return node * args.devices + int(os.environ.get("LOCAL_RANK", 0))


class _Rows(Dataset):
    """The training rows; with ``probs`` given, a fresh Bernoulli draw of the row on every
    access (dynamic binarisation), from the process's RNG, which each rank seeds apart."""

    def __init__(self, rows: torch.Tensor, binarise_on_access: bool) -> None:
        self.rows, self.binarise = rows, binarise_on_access

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        row = self.rows[index]
        return torch.bernoulli(row) if self.binarise else row


class _RunModule(DiscreteSVIModule):
    """:class:`DiscreteSVIModule` continuing a CLI checkpoint: its param store and Adam
    moments are loaded once the optimizer exists, and step numbers go on from its step."""

    def __init__(self, *args, checkpoint: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cli_checkpoint = checkpoint
        self.start_step = 0 if checkpoint is None else int(checkpoint["step"])

    def on_train_start(self) -> None:
        if self.cli_checkpoint is not None:
            device = self.params.parameter(self.params.names[0]).device
            load_param_store_state(
                self.cli_checkpoint["param_store"], required=self.params.names, device=device
            )
            _load_optimizer_state(self.trainer.optimizers[0], self.cli_checkpoint["optim"])
        super().on_train_start()
        # a resumed run draws other samples than the steps it already took
        seed = rank_seed(self.seed, self.global_rank, self.start_step + self.global_step)
        pyro.set_rng_seed(seed)


def _load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    params = dict(pyro.get_param_store().named_parameters())
    trained = {p for group in optimizer.param_groups for p in group["params"]}
    for name, moments in state.items():
        param = params.get(name)
        if param is None or param not in trained:
            continue  # moments of a parameter this set-up does not train: nothing to resume
        optimizer.state[param] = {
            k: v.to(param.device) if torch.is_tensor(v) and k != "step" else v
            for k, v in moments.items()
        }


def _on_cpu(state: dict) -> dict:
    # a GPU run's checkpoint resumes on a CPU machine, as the single-process one does
    return {**state, "params": {k: v.cpu() for k, v in state["params"].items()}}


def _optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    store = pyro.get_param_store()
    return {
        store.param_name(p): {k: v.detach().cpu().clone() for k, v in s.items()}
        for p, s in optimizer.state.items()
    }


class _RunDirectory(Callback):
    """Rank 0's writer: metrics rows every ``log_every`` steps, a checkpoint every
    ``checkpoint_every`` steps and at the end, both in the single-process formats."""

    def __init__(
        self,
        out: Path,
        config: dict,
        args: argparse.Namespace,
        task: Task,
        model: torch.nn.Module,
        checkpoint: dict | None,
    ) -> None:
        self.out, self.config, self.args, self.task, self.model = out, config, args, task, model
        self.step = 0 if checkpoint is None else int(checkpoint["step"])
        self.first_step = self.step
        self.elapsed = 0.0 if checkpoint is None else float(checkpoint["elapsed"])
        self.excluded = 0.0 if checkpoint is None else float(checkpoint["excluded"])
        self.ema, self.smoothed = EMA(), float("nan")
        if checkpoint is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])
            self.smoothed = checkpoint["smoothed"]
        self.history: list[dict] = []
        self.saved_step = None if checkpoint is None else self.step
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
        if trainer.global_rank != 0:
            return
        self.smoothed = -self.ema.update(loss / batch.shape[0])
        last = self.step == self.config["steps"]
        if self.step % self.args.log_every == 0 or last:
            train_time = self.elapsed - self.excluded
            self.history.append(
                {"step": self.step, "wall_time_s": train_time, "train_elbo_ema": self.smoothed}
            )
        t0 = time.perf_counter()
        if self.step % self.args.checkpoint_every == 0 or last:
            self.save(trainer)
        elif self.history:
            self._flush()
        self.excluded += time.perf_counter() - t0

    def _flush(self) -> None:
        metrics.append_rows(self.out / rundir.METRICS, self.history)
        self.history.clear()

    def save(self, trainer) -> None:
        self._flush()
        batches = len(self.task.loader(self.config["batch_size"], self.config["seed"], "cpu"))
        consumed = self.step * trainer.world_size  # minibatches of --batch-size seen
        checkpoint = {
            "format_version": rundir.FORMAT_VERSION,
            "model_name": self.config["model"],
            "config": {key: self.config[key] for key in rundir.TRAINING_OPTIONS},
            "step": self.step,
            "elapsed": self.elapsed,
            "excluded": self.excluded,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "param_store": _on_cpu(rundir.param_store_state()),
            "optim": _optimizer_state(trainer.optimizers[0]),
            "loader": {
                "epoch": consumed // batches,
                "position": consumed % batches,
                "seed": self.config["seed"],
            },
            "rng": torch.get_rng_state(),
            "ema": self.ema.state_dict(),
            "smoothed": self.smoothed,
        }
        try:
            rundir.save_checkpoint(self.out, checkpoint)
        except OSError as e:
            kept = "no checkpoint" if self.saved_step is None else f"step {self.saved_step}'s"
            raise CLIError(
                f"cannot write {self.out / rundir.CHECKPOINT} at step {self.step}: "
                f"{e.strerror or e}; {kept} is intact: free space or make {self.out} "
                "writable, then continue with --resume"
            ) from None
        self.saved_step = self.step


def _config(args: argparse.Namespace) -> dict:
    config = {"format_version": rundir.FORMAT_VERSION}
    for key in rundir.TRAINING_OPTIONS:
        value = getattr(args, key, None)
        config[key] = NEW_RUN_DEFAULTS[key] if value is None else value
    make_elbo(config["estimator"])  # validates the name before any data is loaded
    check_model_name(config["model"])
    config["steps"] = NEW_RUN_DEFAULTS["steps"] if args.steps is None else args.steps
    config["device"] = args.accelerator
    config[PARALLEL] = parallel_options(args)
    return config


def _prepare_resume(args: argparse.Namespace, out: Path, rank: int) -> tuple[dict, dict]:
    """The updated config and the checkpoint; rank 0 also tidies the directory."""
    config, checkpoint, steps = resume_point(args, out)
    updated = {**config, "steps": steps, "device": args.accelerator}
    updated[PARALLEL] = parallel_options(args)
    if rank == 0 and steps > checkpoint["step"]:
        for orphan in rundir.remove_orphaned_temporaries(out):
            print(
                f"pyro-discrete: removed {orphan.name}, left by a killed process", file=sys.stderr
            )
        metrics.truncate_metrics(out / rundir.METRICS, checkpoint["step"])
        (out / rundir.SUMMARY).unlink(missing_ok=True)  # an extended run is unfinished again
        if updated != config:
            rundir.write_config(out, updated)
    return updated, checkpoint


def _train(args, out: Path, config: dict, task: Task, checkpoint: dict | None, rank: int) -> int:
    pyro.clear_param_store()
    pyro.set_rng_seed(config["seed"])  # the same initial parameters on every process
    model = task.build_model()
    if checkpoint is not None:
        rundir.load_model_state(model, checkpoint["model"], out, config["model"])
    start = 0 if checkpoint is None else int(checkpoint["step"])
    if start >= config["steps"]:
        if rank == 0:
            print(
                f"pyro-discrete fit: the run in {out} is at step {start}; nothing to do "
                "(pass a larger --steps to continue it)",
                file=sys.stderr,
            )
        return 0
    rows = task.train if task.train_probs is None else task.train_probs
    dataset = _Rows(rows, binarise_on_access=task.train_probs is not None)
    batch_size = config["batch_size"]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)
    module = _RunModule(
        model.model,
        model.guide,
        make_elbo(config["estimator"]),
        next(iter(DataLoader(dataset, batch_size=batch_size))),
        lr=config["lr"],
        control_variate_lr_factor=config["cv_lr_factor"],
        optimizer_options={"betas": _BETAS},
        seed=config["seed"],
        batch_to_args=lambda batch: (task.args(batch), {}),
        checkpoint=checkpoint,
    )
    writer = _RunDirectory(out, config, args, task, model, checkpoint)
    options = parallel_options(args)
    trainer = pl.Trainer(
        max_steps=config["steps"] - start,
        max_epochs=-1,
        devices=options["devices"],
        num_nodes=options["num_nodes"],
        accelerator=options["accelerator"],
        strategy=options["strategy"],
        callbacks=[writer],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.no_progress and rank == 0,
        default_root_dir=str(out),
    )
    if rank == 0:
        print(
            f"fit: {config['model']} with {config['estimator']} on {task.data_name}, steps "
            f"{start} -> {config['steps']} on {trainer.world_size} process(es), output {out}",
            file=sys.stderr,
        )
    trainer.fit(module, loader)
    if trainer.global_rank != 0:
        return 0
    model.to("cpu")
    summary = _summarise_parallel(writer, task, out, args, model, trainer.world_size)
    print(
        f"valid ELBO {summary['valid_elbo']:.2f} nats ({summary['valid_examples']} examples, "
        f"one sample each); run saved in {out}"
    )
    return 0


def _summarise_parallel(
    writer: _RunDirectory, task: Task, out: Path, args, model, world_size: int
) -> dict:
    """The single-process ``summary.json``, plus the processes and examples per second."""
    train_time = writer.elapsed - writer.excluded
    kind = SimpleNamespace(
        description=f"eager step, data-parallel on {world_size} process(es) through Lightning"
    )
    done = SimpleNamespace(step=writer.step, train_time=train_time, model=model, step_choice=kind)
    summary = _summarise(done, task, out, args.eval_examples, torch.device("cpu"))
    summary["processes"] = world_size
    examples = (writer.step - writer.first_step) * writer.config["batch_size"] * world_size
    this_session = train_time - writer.first_train_time
    summary["examples_per_s"] = round(examples / this_session, 1) if this_session > 0 else None
    atomic_write_text(out / rundir.SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


def cmd_fit_parallel(args: argparse.Namespace) -> int:
    """``fit`` through Lightning's ``Trainer`` on ``--devices`` × ``--num-nodes`` processes."""
    if args.device != "cpu":
        raise CLIError("--device does not apply with --devices/--strategy: use --accelerator")
    if getattr(args, "compile", "auto") == "on":
        raise CLIError(
            "--compile on does not apply with --devices/--strategy: the data-parallel path "
            "trains with the eager step (see docs/data_parallel.md); drop --compile"
        )
    out = Path(args.out)
    rank = _global_rank(args)
    if rank != 0:  # started by rank 0 (or a scheduler): read, never write, the directory
        if args.resume:
            config, checkpoint = _prepare_resume(args, out, rank)
        else:
            config, checkpoint = _config(args), None
        task = make_task(config["model"], config["data"], config["binarization"], config["seed"])
        return _train(args, out, config, task, checkpoint, rank)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a directory; choose another --out")
    if args.resume:
        if not (out / rundir.CONFIG).is_file():
            rundir.read_config(out)  # the message for a directory that is no run
        with RunLock(out, "pyro-discrete fit --resume"):
            config, checkpoint = _prepare_resume(args, out, rank)
            if checkpoint["step"] == config["steps"] and (out / rundir.SUMMARY).is_file():
                print(
                    f"pyro-discrete fit: the run in {out} already finished at step "
                    f"{config['steps']}; nothing to do",
                    file=sys.stderr,
                )
                return 0
            task = make_task(
                config["model"], config["data"], config["binarization"], config["seed"]
            )
            return _train(args, out, config, task, checkpoint, rank)
    config = _config(args)
    task = make_task(config["model"], config["data"], config["binarization"], config["seed"])
    if out.exists() and not args.overwrite:
        _clear_for_new_run(out, overwrite=False)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out, "pyro-discrete fit"):
        _clear_for_new_run(out, args.overwrite)
        rundir.write_config(out, config)
        metrics.start_metrics(out / rundir.METRICS)
        return _train(args, out, config, task, None, rank)
