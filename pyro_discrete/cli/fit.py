"""``pyro-discrete fit``: train one model with one estimator, checkpointing and resuming."""

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

from . import rundir
from .errors import CLIError
from .tasks import Task, check_model_name, make_device, make_elbo, make_task
from .training import RunState, advance, new_run, progress_bar, register_modules

__all__ = ["cmd_fit"]

_METRICS_HEADER = "step,wall_time_s,train_elbo_ema\n"


def _check_fresh_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CLIError(
            f"{out} already exists and is not empty; pass --resume to continue that run, "
            "--overwrite to replace it, or choose another --out"
        )


def _resumed_config(args: argparse.Namespace, out: Path) -> tuple[dict, dict, int]:
    config = rundir.read_config(out)
    for key in ("model", "estimator", "data"):
        given = getattr(args, key)
        if given is not None and given != config[key]:
            raise CLIError(
                f"--{key} {given} does not match the run in {out}, which was started with "
                f"--{key} {config[key]}; resume with the same {key} or start a new --out"
            )
    checkpoint = rundir.load_checkpoint(out)
    steps = args.steps if args.steps is not None else config["steps"]
    if steps < checkpoint["step"]:
        raise CLIError(f"--steps {steps} is below the checkpoint's step {checkpoint['step']}")
    return config, checkpoint, steps


def _new_config(args: argparse.Namespace) -> tuple[dict, int]:
    config = {
        "format_version": rundir.FORMAT_VERSION,
        "model": args.model or "sbn_linear1",
        "estimator": args.estimator or "reinforce",
        "data": args.data or "mnist",
        "binarization": args.binarization,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "cv_lr_factor": args.cv_lr_factor,
        "seed": args.seed,
    }
    make_elbo(config["estimator"])  # validates the name before any data is loaded
    return config, args.steps if args.steps is not None else 1000


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


def _prepare_metrics(path: Path, resumed_step: int | None) -> None:
    if resumed_step is not None and path.exists():
        # rows past the checkpoint (a run stopped while saving) would be repeated on resume
        rows = path.read_text().splitlines()[1:]
        kept = [r for r in rows if r and int(r.split(",")[0]) <= resumed_step]
        atomic_write_text(path, _METRICS_HEADER + "".join(r + "\n" for r in kept))
    elif not path.exists():
        path.write_text(_METRICS_HEADER)


def _save(run: RunState, out: Path, config: dict) -> None:
    with (out / rundir.METRICS).open("a") as f:
        for row in run.history:
            f.write(f"{row['step']},{row['wall_time_s']:.3f},{row['train_elbo_ema']:.4f}\n")
    run.history.clear()
    rundir.save_checkpoint(
        out,
        {
            "format_version": rundir.FORMAT_VERSION,
            "model_name": config["model"],
            "step": run.step,
            "elapsed": run.elapsed,
            "excluded": run.excluded,
            "model": {k: v.cpu() for k, v in run.model.state_dict().items()},
            "param_store": rundir.param_store_state(),
            "optim": run.optim.get_state(),
            "loader": run.loader.state_dict(),
            "rng": torch.get_rng_state(),
        },
    )


def _summarise(run: RunState, task: Task, out: Path, examples: int, device: torch.device) -> dict:
    valid_args = task.args(task.split_rows("valid")[:examples].to(device))
    summary = {
        "complete": True,
        "step": run.step,
        "train_time_s": round(run.train_time, 2),
        "steps_per_s": round(run.step / run.train_time, 2) if run.train_time else None,
        "valid_elbo": elbo_estimate(run.model.model, run.model.guide, *valid_args),
        "valid_examples": int(valid_args[0].shape[0]),
    }
    atomic_write_text(out / rundir.SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


def cmd_fit(args: argparse.Namespace) -> int:
    """Train, checkpointing every ``--checkpoint-every`` steps; ``--resume`` continues."""
    out = Path(args.out)
    device = make_device(args.device)
    checkpoint = None
    if args.resume:
        config, checkpoint, steps = _resumed_config(args, out)
    else:
        config, steps = _new_config(args)
    config["steps"] = steps
    config["device"] = str(device)
    check_model_name(config["model"])
    task = make_task(config["model"], config["data"], config["binarization"], config["seed"])
    if not args.resume:
        _check_fresh_out(out, args.overwrite)

    run = new_run(
        task,
        config["estimator"],
        config["lr"],
        config["cv_lr_factor"],
        config["batch_size"],
        config["seed"],
        device,
    )
    if checkpoint is not None:
        _restore(run, checkpoint, out, config, device)
    elif args.overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / rundir.SUMMARY).unlink(missing_ok=True)  # a resumed run is unfinished until it ends
    rundir.write_config(out, config)
    _prepare_metrics(out / rundir.METRICS, None if checkpoint is None else run.step)

    def maybe_save(run: RunState) -> None:
        if run.step % args.checkpoint_every == 0 and run.step < steps:
            t0 = time.perf_counter()
            _save(run, out, config)
            run.excluded += time.perf_counter() - t0

    print(
        f"fit: {config['model']} with {config['estimator']} on {task.data_name}, "
        f"steps {run.step} -> {steps}, output {out}",
        file=sys.stderr,
    )
    bar = progress_bar(steps, run.step, config["estimator"], not args.no_progress)
    try:
        advance(run, steps, bar=bar, on_step=maybe_save, log_every=args.log_every)
    finally:
        bar.close()
    _save(run, out, config)
    summary = _summarise(run, task, out, args.eval_examples, device)
    print(
        f"valid ELBO {summary['valid_elbo']:.2f} nats ({summary['valid_examples']} examples, "
        f"one sample each); run saved in {out}"
    )
    return 0
