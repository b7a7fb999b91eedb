"""``pyro-discrete fit``: train one model with one estimator, checkpointing and resuming.

What a run directory promises (see :mod:`~pyro_discrete.cli.rundir`):

- one writer: ``fit`` holds the directory's lock (:class:`~pyro_discrete.cli.lock.RunLock`)
  while it runs; another ``fit`` on it, resumed or ``--overwrite``, is refused;
- nothing lost: the checkpoint is replaced atomically every ``--checkpoint-every`` steps and
  on ``SIGINT``/``SIGTERM`` (exit 130/143); ``metrics.csv`` is flushed every ``--log-every``
  steps; a resumed run (after a kill at any moment) continues exactly like an
  uninterrupted one, its curve included;
- a resume changes nothing it does not have to: resuming a finished run leaves every file
  as it is, and a resume whose training options differ from the run's is refused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pyro
import torch

from pyro_discrete._io import atomic_write_text
from pyro_discrete.diagnostics import elbo_estimate

from . import metrics, rundir
from .compiling import StepChoice, choose_step
from .errors import CLIError
from .lock import LOCK, RunLock
from .tasks import Task, check_model_name, make_device, make_elbo, make_task
from .training import RunState, StopRequest, advance, new_run, progress_bar, register_modules

__all__ = ["cmd_fit", "NEW_RUN_DEFAULTS"]

#: what a new run uses for the options not given on its command line
NEW_RUN_DEFAULTS = {
    "model": "sbn_linear1",
    "estimator": "reinforce",
    "data": "mnist",
    "binarization": "static",
    "batch_size": 24,
    "lr": 3e-4,
    "cv_lr_factor": 10.0,
    "seed": 0,
    "steps": 1000,
}


def _given(args: argparse.Namespace) -> set[str]:
    return set(getattr(args, "given", ()))


def _option(args: argparse.Namespace, key: str):
    value = getattr(args, key, None)
    return NEW_RUN_DEFAULTS[key] if value is None else value


def _check_resume_options(args: argparse.Namespace, config: dict, out: Path) -> None:
    """:raises CLIError: naming every training option given that differs from the run's."""
    differences = [
        f"{rundir.option_flag(key)} {getattr(args, key)} (the run has {config[key]})"
        for key in rundir.TRAINING_OPTIONS
        if key in _given(args) and getattr(args, key) != config[key]
    ]
    if differences:
        raise CLIError(
            f"--resume: {'; '.join(differences)} does not match the run in {out}; a resumed "
            "run keeps the options it was started with: drop them to resume, or start a new "
            "--out"
        )


def _new_config(args: argparse.Namespace, device: torch.device) -> dict:
    config = {"format_version": rundir.FORMAT_VERSION}
    config.update({key: _option(args, key) for key in rundir.TRAINING_OPTIONS})
    make_elbo(config["estimator"])  # validates the name before any data is loaded
    check_model_name(config["model"])
    config["steps"] = _option(args, "steps")
    config["device"] = str(device)
    return config


def _restore(
    run: RunState, checkpoint: dict, out: Path, config: dict, device: torch.device
) -> None:
    rundir.load_model_state(run.model, checkpoint["model"], out, config["model"])
    run.model.to(device)
    batch = run.task.args(run.loader.next_batch())
    register_modules(run.model, batch)
    rundir.load_param_store_state(checkpoint["param_store"])
    # Estimators build control-variate networks lazily, drawing their initial weights
    # from torch's RNG. One throw-away gradient evaluation builds them now (they load
    # the checkpoint's values from the store), so that the RNG restored below is consumed
    # exactly as in an uninterrupted run; the store is then restored again, undoing the
    # running statistics that evaluation updated.
    run.elbo.loss_and_grads(run.model.model, run.model.guide, *batch)
    rundir.load_param_store_state(checkpoint["param_store"])
    for _name, p in pyro.get_param_store().named_parameters():
        p.grad = None
    run.optim.set_state(checkpoint["optim"])
    run.loader.load_state_dict(checkpoint["loader"])
    torch.set_rng_state(checkpoint["rng"])
    run.step, run.elapsed = checkpoint["step"], checkpoint["elapsed"]
    run.excluded = checkpoint["excluded"]
    if "ema" in checkpoint:  # format 1 did not keep the smoothed ELBO: it restarts
        run.ema.load_state_dict(checkpoint["ema"])
        run.smoothed = checkpoint["smoothed"]


def _checkpoint(run: RunState, config: dict) -> dict:
    # the smoothed ELBO must hold every step trained so far: read the compiled steps' losses
    run.sync()
    # a compiled step updates the optimizer's own state tensors in place, so
    # run.optim.get_state() holds the moments and step counts of every step, compiled or not
    return {
        "format_version": rundir.FORMAT_VERSION,
        "model_name": config["model"],
        "config": {key: config[key] for key in rundir.TRAINING_OPTIONS},
        "step": run.step,
        "elapsed": run.elapsed,
        "excluded": run.excluded,
        "model": {k: v.cpu() for k, v in run.model.state_dict().items()},
        "param_store": rundir.param_store_state(),
        "optim": run.optim.get_state(),
        "loader": run.loader.state_dict(),
        "rng": torch.get_rng_state(),
        "ema": run.ema.state_dict(),
        "smoothed": run.smoothed,
    }


class _Writer:
    """Writes a run's metrics rows and checkpoints into its directory, off the clock."""

    def __init__(self, out: Path, config: dict, saved_step: int | None) -> None:
        self.out, self.config, self.saved_step = out, config, saved_step

    def flush_metrics(self, run: RunState) -> None:
        metrics.append_rows(self.out / rundir.METRICS, run.history)
        run.history.clear()

    def save(self, run: RunState) -> None:
        t0 = time.perf_counter()
        self.flush_metrics(run)
        try:
            rundir.save_checkpoint(self.out, _checkpoint(run, self.config))
        except OSError as e:
            kept = (
                "no checkpoint was written before"
                if self.saved_step is None
                else f"the checkpoint of step {self.saved_step} is intact"
            )
            raise CLIError(
                f"cannot write {self.out / rundir.CHECKPOINT} at step {run.step}: "
                f"{e.strerror or e}; {kept}: free space or make {self.out} writable, then "
                "continue with --resume"
            ) from None
        self.saved_step = run.step
        run.excluded += time.perf_counter() - t0


def _summarise(run: RunState, task: Task, out: Path, examples: int, device: torch.device) -> dict:
    valid_args = task.args(task.split_rows("valid")[:examples].to(device))
    summary = {
        "complete": True,
        "step_kind": run.step_choice.description,
        "step": run.step,
        "train_time_s": round(run.train_time, 2),
        "steps_per_s": round(run.step / run.train_time, 2) if run.train_time else None,
        "valid_elbo": elbo_estimate(run.model.model, run.model.guide, *valid_args),
        "valid_examples": int(valid_args[0].shape[0]),
    }
    atomic_write_text(out / rundir.SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


def _interrupted(run: RunState, writer: _Writer, signum: int, out: Path) -> int:
    if writer.saved_step == run.step:
        where = f"checkpoint of step {run.step} saved in {out / rundir.CHECKPOINT}"
    else:
        where = "nothing trained yet, nothing saved"
    print(
        f"pyro-discrete fit: interrupted at step {run.step}; {where}; continue with "
        f"`pyro-discrete fit --out {out} --resume`",
        file=sys.stderr,
    )
    return 128 + signum


def _start_run(
    out: Path,
    config: dict,
    task: Task,
    device: torch.device,
    checkpoint: dict | None,
    step_choice: StepChoice,
) -> RunState:
    """A new run from the config, continued from ``checkpoint`` if one is given."""
    run = new_run(
        task,
        config["estimator"],
        config["lr"],
        config["cv_lr_factor"],
        config["batch_size"],
        config["seed"],
        device,
        step_choice=step_choice,
    )
    if checkpoint is not None:
        try:
            _restore(run, checkpoint, out, config, device)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            first = str(e).splitlines()[0] if str(e) else ""
            raise CLIError(
                f"{out / rundir.CHECKPOINT} does not fit this run ({type(e).__name__}: "
                f"{first}); start again with --overwrite"
            ) from None
    return run


def _train_until(args: argparse.Namespace, run: RunState, writer: _Writer, steps: int) -> int:
    """Train to ``steps``, saving as it goes; the signal that stopped it early, or 0."""

    def on_step(run: RunState) -> None:
        if run.step % args.checkpoint_every == 0 and run.step < steps:
            writer.save(run)
        elif run.history:
            t0 = time.perf_counter()
            writer.flush_metrics(run)
            run.excluded += time.perf_counter() - t0

    with StopRequest() as stop:
        bar = progress_bar(steps, run.step, run.name, not args.no_progress)
        try:
            advance(
                run, steps, bar=bar, on_step=on_step, log_every=args.log_every, stop=stop.requested
            )
        finally:
            bar.close()
        if writer.saved_step != run.step and run.step > 0:
            writer.save(run)
    return stop.signum or 0


def _train(
    args: argparse.Namespace,
    out: Path,
    config: dict,
    task: Task,
    device: torch.device,
    checkpoint: dict | None,
) -> int:
    """Train to ``config["steps"]`` from ``checkpoint`` (or from scratch), then summarise."""
    step_choice = choose_step(args.compile, args.compile_backend, device)
    run = _start_run(out, config, task, device, checkpoint, step_choice)
    if run.step < config["steps"]:
        (out / rundir.SUMMARY).unlink(missing_ok=True)  # an extended run is unfinished again
    writer = _Writer(out, config, None if checkpoint is None else run.step)
    print(
        f"fit: {config['model']} with {config['estimator']} on {task.data_name}, "
        f"steps {run.step} -> {config['steps']}, output {out}; {step_choice.description}",
        file=sys.stderr,
    )
    signum = _train_until(args, run, writer, config["steps"])
    if signum:
        return _interrupted(run, writer, signum, out)
    summary = _summarise(run, task, out, args.eval_examples, device)
    print(
        f"valid ELBO {summary['valid_elbo']:.2f} nats ({summary['valid_examples']} examples, "
        f"one sample each); run saved in {out}"
    )
    return 0


def resume_point(args: argparse.Namespace, out: Path) -> tuple[dict, dict, int]:
    """The run's config, its checkpoint and the step to train to, once the resume checks
    (same options, same run, a target not below the checkpoint) have passed."""
    config = rundir.read_config(out)
    _check_resume_options(args, config, out)
    checkpoint = rundir.load_checkpoint(out)
    rundir.check_same_run(checkpoint, config, out)
    steps = args.steps if args.steps is not None else config["steps"]
    if steps < checkpoint["step"]:
        raise CLIError(f"--steps {steps} is below the checkpoint's step {checkpoint['step']}")
    return config, checkpoint, steps


def _resume(args: argparse.Namespace, out: Path, device: torch.device) -> int:
    config, checkpoint, steps = resume_point(args, out)
    if steps == checkpoint["step"] and (out / rundir.SUMMARY).is_file():
        print(
            f"pyro-discrete fit: the run in {out} already finished at step {steps}; nothing "
            "to do (pass a larger --steps to continue it)",
            file=sys.stderr,
        )
        return 0
    task = make_task(config["model"], config["data"], config["binarization"], config["seed"])
    for orphan in rundir.remove_orphaned_temporaries(out):
        print(
            f"pyro-discrete: removed {orphan.name}, left by a process killed while writing",
            file=sys.stderr,
        )
    metrics.truncate_metrics(out / rundir.METRICS, checkpoint["step"])
    updated = {**config, "steps": steps, "device": str(device)}
    updated.pop("parallel", None)  # recorded by a multi-process run; this one is not
    if updated != config:
        rundir.write_config(out, updated)
    return _train(args, out, updated, task, device, checkpoint)


def _clear_for_new_run(out: Path, overwrite: bool) -> None:
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


def _parallel(args: argparse.Namespace) -> bool:
    """Whether the run trains through Lightning (:mod:`~pyro_discrete.cli.parallel`)."""
    return (
        getattr(args, "devices", 1) > 1
        or getattr(args, "num_nodes", 1) > 1
        or getattr(args, "strategy", None) is not None
    )


def cmd_fit(args: argparse.Namespace) -> int:
    """Train, checkpointing every ``--checkpoint-every`` steps; ``--resume`` continues."""
    if _parallel(args):
        try:
            from .parallel import cmd_fit_parallel  # imports Lightning, an optional dependency
        except ImportError as e:
            raise CLIError(f"--devices/--num-nodes/--strategy: {e}") from None
        return cmd_fit_parallel(args)
    out = Path(args.out)
    device = make_device(args.device)
    choose_step(args.compile, args.compile_backend, device)  # refused before any file is written
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a directory; choose another --out")
    if args.resume:
        if not (out / rundir.CONFIG).is_file():
            rundir.read_config(out)  # the message for a directory that is no run
        with RunLock(out, "pyro-discrete fit --resume"):
            return _resume(args, out, device)
    config = _new_config(args, device)
    # loads the data before any directory is created: missing data leaves nothing behind
    task = make_task(config["model"], config["data"], config["binarization"], config["seed"])
    if out.exists() and not args.overwrite:
        _clear_for_new_run(out, overwrite=False)  # refuses a directory that is not empty
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out, "pyro-discrete fit"):
        _clear_for_new_run(out, args.overwrite)
        rundir.write_config(out, config)
        metrics.start_metrics(out / rundir.METRICS)
        return _train(args, out, config, task, device, None)
