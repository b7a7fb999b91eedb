"""``pyro-discrete evaluate``: importance-weighted bounds of a fitted model."""

from __future__ import annotations

import argparse
import json
import time

import pyro

from pyro_discrete._io import atomic_write_text
from pyro_discrete.diagnostics import importance_weighted_bound

from . import checkpoints, rundir
from .errors import CLIError
from .options import EvaluateOptions, positive_int, seed_number
from .run import Run
from .tasks import make_device, make_task

__all__ = ["add_evaluate_parser", "cmd_evaluate"]


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
    checkpoints.load_model_state(model, checkpoint["model"], run_dir, config["model"])
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


def add_evaluate_parser(sub, formatter_class: type[argparse.HelpFormatter]) -> None:
    """The ``evaluate`` subcommand's parser, added to the subparsers ``sub``."""
    evaluate = sub.add_parser(
        "evaluate",
        help="importance-weighted bound of a fitted model",
        formatter_class=formatter_class,
        description="The K-sample importance-weighted bound on log p(x) (Burda et al. 2016), "
        "per example and averaged, for the checkpoint of a `fit` run.",
    )
    evaluate.add_argument("--checkpoint", required=True, help="run directory of `fit`")
    evaluate.add_argument(
        "--samples", type=positive_int, nargs="+", default=[100], help="one or more K"
    )
    evaluate.add_argument("--split", default="test", choices=["valid", "test"])
    evaluate.add_argument(
        "--max-examples",
        type=positive_int,
        default=None,
        help="evaluate on the first N examples of the split only",
    )
    evaluate.add_argument(
        "--batch-size", type=positive_int, default=100, help="examples per vectorised pass"
    )
    evaluate.add_argument("--model", default=None, help="assert the checkpoint's model")
    evaluate.add_argument("--device", default="cpu", help="cpu or cuda")
    evaluate.add_argument(
        "--seed", type=seed_number, default=0, help="seed of the importance samples"
    )
    evaluate.add_argument("--json", default=None, help="also write the bounds to this file")
    evaluate.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch intra-op threads (default: torch's choice; evaluation "
        "batches are large enough to gain from several)",
    )
    evaluate.set_defaults(func=cmd_evaluate, make_options=EvaluateOptions.from_namespace)
