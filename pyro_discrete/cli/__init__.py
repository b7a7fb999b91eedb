r"""``pyro-discrete``: train, compare and evaluate discrete-latent models from the command line.

Subcommands::

    pyro-discrete fit --model sbn_linear1 --estimator rebar --steps 20000 --out runs/rebar
    pyro-discrete fit --out runs/rebar --resume --steps 40000
    pyro-discrete compare --model sbn_linear1 --estimators reinforce,nvil,rebar --steps 5000 \
        --out runs/cmp
    pyro-discrete evaluate --checkpoint runs/rebar --samples 100 1000 --split test
    pyro-discrete demo

``fit`` writes ``config.json``, ``metrics.csv`` and an atomically replaced ``checkpoint.pt``
(model parameters, Pyro's param store with the control-variate state, optimiser state, data
position and RNG state) every ``--checkpoint-every`` steps; ``summary.json`` is written last
and marks a finished run. ``compare`` builds its output in a hidden temporary directory and
renames it into place only when ``report.md``, ``results.csv`` and the plots are complete.

Bad input (unknown names, missing data, CUDA requested but unavailable, a checkpoint that
belongs to another model) ends with exit status 2 and one line saying what is wrong and how
to fix it, before any run directory is created.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence

import torch

from pyro_discrete.datasets import DataNotFoundError
from pyro_discrete.models import UnknownModelError

from .compare import CV_PREFIX, CompareSettings, cmd_compare, run_compare
from .demo import DEMO_ESTIMATORS, cmd_demo
from .errors import CLIError
from .evaluate import cmd_evaluate
from .fit import cmd_fit
from .parser import build_parser
from .report import write_report as _write_report  # noqa: F401 - compare calls it from here
from .rundir import load_param_store_state, param_store_state
from .tasks import Task, make_elbo, make_task
from .training import RunState

__all__ = [
    "CLIError",
    "CV_PREFIX",
    "CompareSettings",
    "DEMO_ESTIMATORS",
    "RunState",
    "Task",
    "build_parser",
    "cmd_compare",
    "cmd_demo",
    "cmd_evaluate",
    "cmd_fit",
    "load_param_store_state",
    "main",
    "make_elbo",
    "make_task",
    "param_store_state",
    "run_compare",
]


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-discrete`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # turn `kill` into an exception, so that `finally` blocks remove temporary output
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except (CLIError, DataNotFoundError, UnknownModelError) as e:
        print(f"pyro-discrete {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(
            f"pyro-discrete {args.command}: training diverged: {e}; try a lower --lr",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"pyro-discrete {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
