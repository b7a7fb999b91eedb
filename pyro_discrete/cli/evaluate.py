"""``pyro-discrete evaluate``: importance-weighted bounds of a fitted model."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro

from pyro_discrete._io import atomic_write_text
from pyro_discrete.diagnostics import importance_weighted_bound

from . import rundir
from .errors import CLIError
from .tasks import make_device, make_task

__all__ = ["cmd_evaluate"]


def _checked_checkpoint(run_dir: Path, config: dict, model: str | None) -> dict:
    if model is not None and model != config["model"]:
        raise CLIError(f"the checkpoint in {run_dir} is a {config['model']!r} model, not {model!r}")
    checkpoint = rundir.load_checkpoint(run_dir)
    rundir.check_same_run(checkpoint, config, run_dir)
    return checkpoint


def cmd_evaluate(args: argparse.Namespace) -> int:
    r"""Print the :math:`K`-sample importance-weighted bound for every ``--samples`` K."""
    run_dir = Path(args.checkpoint)
    device = make_device(args.device)
    config = rundir.read_config(run_dir)
    checkpoint = _checked_checkpoint(run_dir, config, args.model)
    task = make_task(config["model"], config["data"], config["binarization"], config["seed"])
    pyro.clear_param_store()
    model = task.build_model()
    rundir.load_model_state(model, checkpoint["model"], run_dir, config["model"])
    model.to(device).eval()
    rows = task.split_rows(args.split)
    if args.max_examples:
        rows = rows[: args.max_examples]
    data = task.args(rows.to(device))
    complete = (run_dir / rundir.SUMMARY).is_file()
    print(
        f"{config['model']} trained with {config['estimator']} for {checkpoint['step']} "
        f"steps{'' if complete else ' (run not finished: last checkpoint)'}; "
        f"{args.split} split, {rows.shape[0]} examples"
    )
    pyro.set_rng_seed(args.seed)
    results = {}
    for k in args.samples:
        t0 = time.perf_counter()
        bound = importance_weighted_bound(
            model.model,
            model.guide,
            *data,
            num_samples=k,
            batch_size=args.batch_size,
            chunk_size=min(k, 100),
        )
        results[k] = bound
        print(
            f"  importance-weighted bound, K={k:5d}: {bound:10.3f} nats "
            f"({time.perf_counter() - t0:.1f}s)"
        )
    if args.json:
        atomic_write_text(
            Path(args.json),
            json.dumps(
                {
                    "split": args.split,
                    "examples": int(rows.shape[0]),
                    "step": checkpoint["step"],
                    "bounds": {str(k): v for k, v in results.items()},
                },
                indent=2,
            )
            + "\n",
        )
    return 0
