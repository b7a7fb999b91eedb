"""``pyro-discrete evaluate``: importance-weighted bounds of a fitted model."""

from __future__ import annotations

import json
import time

import pyro

from pyro_discrete._io import atomic_write_text
from pyro_discrete.diagnostics import importance_weighted_bound

from . import rundir
from .errors import CLIError
from .options import EvaluateOptions
from .run import Run
from .tasks import make_device, make_task

__all__ = ["cmd_evaluate"]


def cmd_evaluate(options: EvaluateOptions) -> int:
    r"""Print the :math:`K`-sample importance-weighted bound for every ``--samples`` K."""
    run_dir = options.checkpoint
    device = make_device(options.device)
    config = rundir.read_config(run_dir)
    if options.model is not None and options.model != config["model"]:
        raise CLIError(
            f"the checkpoint in {run_dir} is a {config['model']!r} model, not {options.model!r}"
        )
    run = Run.open(run_dir)
    checkpoint = run.checkpoint
    task = make_task(config["model"], config["data"], config["binarization"], config["seed"])
    pyro.clear_param_store()
    model = task.build_model()
    rundir.load_model_state(model, checkpoint["model"], run_dir, config["model"])
    model.to(device).eval()
    rows = task.split_rows(options.split)
    if options.max_examples:
        rows = rows[: options.max_examples]
    data = task.args(rows.to(device))
    complete = (run_dir / rundir.SUMMARY).is_file()
    print(
        f"{config['model']} trained with {config['estimator']} for {checkpoint['step']} "
        f"steps{'' if complete else ' (run not finished: last checkpoint)'}; "
        f"{options.split} split, {rows.shape[0]} examples"
    )
    pyro.set_rng_seed(options.seed)
    results = {}
    for k in options.samples:
        t0 = time.perf_counter()
        bound = importance_weighted_bound(
            model.model,
            model.guide,
            *data,
            num_samples=k,
            batch_size=options.batch_size,
            chunk_size=min(k, 100),
        )
        results[k] = bound
        print(
            f"  importance-weighted bound, K={k:5d}: {bound:10.3f} nats "
            f"({time.perf_counter() - t0:.1f}s)"
        )
    if options.json:
        atomic_write_text(
            options.json,
            json.dumps(
                {
                    "split": options.split,
                    "examples": int(rows.shape[0]),
                    "step": checkpoint["step"],
                    "bounds": {str(k): v for k, v in results.items()},
                },
                indent=2,
            )
            + "\n",
        )
    return 0
