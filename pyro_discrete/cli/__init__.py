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
and marks a finished run. ``compare`` locks ``--out`` as ``fit`` does, builds its output in
a hidden temporary directory and renames it into place only when ``report.md``,
``results.csv`` and the plots are complete (:meth:`~pyro_discrete.cli.run.Run.publish`).

Bad input (unknown names, missing data, CUDA requested but unavailable, a damaged or
foreign checkpoint, a resume with other training options, a directory another process is
writing, an output directory that cannot be written) ends with exit status 2 and one line
saying what is wrong and how to fix it; input that can be checked before training is
checked before any run directory is created. ``SIGINT`` and ``SIGTERM`` end with exit
status 130 and 143 (``fit`` saves a checkpoint first; ``compare`` leaves no partial output).

The package: :mod:`~pyro_discrete.cli.parser` (options), :mod:`~pyro_discrete.cli.fit`,
:mod:`~pyro_discrete.cli.compare`, :mod:`~pyro_discrete.cli.evaluate`,
:mod:`~pyro_discrete.cli.demo` (the subcommands, reading their
:mod:`~pyro_discrete.cli.options`), :mod:`~pyro_discrete.cli.training` (the loop),
:mod:`~pyro_discrete.cli.run` (a run: :mod:`~pyro_discrete.cli.rundir`,
:mod:`~pyro_discrete.cli.metrics`, :mod:`~pyro_discrete.cli.outdir` and
:mod:`~pyro_discrete.cli.lock`), and
:mod:`~pyro_discrete.cli.tasks` (the data sets and the model registry they read). ``compare``
is a package of its own (:mod:`~pyro_discrete.cli.compare`: plan, comparison, measure,
report).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from pyro_discrete._param_store import load_param_store_state, param_store_state
from pyro_discrete.datasets import DataNotFoundError
from pyro_discrete.datasets._cache import cache_location
from pyro_discrete.models import UnknownModelError

from .compare import CompareOptions, CompareSettings, cmd_compare, run_compare
from .compare.budget import process_start
from .compare.measure import CV_PREFIX
from .demo import DEMO_ESTIMATORS, cmd_demo
from .errors import CLIError, Interrupted
from .evaluate import cmd_evaluate
from .fit import cmd_fit
from .options import EvaluateOptions, FitOptions
from .parser import build_parser
from .run import Run
from .tasks import Task, make_elbo, make_task
from .training import RunState

__all__ = [
    "CLIError",
    "CV_PREFIX",
    "CompareOptions",
    "CompareSettings",
    "DEMO_ESTIMATORS",
    "EvaluateOptions",
    "FitOptions",
    "Run",
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
    raise Interrupted(signum)


_OS_ERROR_HINTS = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space (disk quota)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "check the permissions",
    errno.EPERM: "check the permissions",
}


def _os_error_message(e: OSError) -> str:
    """One line for a file-system error: the file, the reason, what to do."""
    target = e.filename if e.filename is not None else "a file"
    hint = _OS_ERROR_HINTS.get(e.errno, "check the path")
    text = f"{target}: {e.strerror or e} ({hint}"
    with contextlib.suppress(OSError, ValueError):
        if Path(os.path.abspath(target)).is_relative_to(os.path.abspath(cache_location())):
            text += ", or set PYRO_DISCRETE_CACHE to a writable directory for the data cache"
    return text + ")"


def main(argv: Sequence[str] | None = None, *, as_process: bool | None = None) -> int:
    """Entry point of the ``pyro-discrete`` console script; returns the exit status.

    Run as a command (``argv`` is ``None``, or ``as_process=True``), the process's start is
    the origin of ``compare --time-budget``: interpreter start-up and imports are part of
    the budget; and once the command is done, further ``SIGINT``/``SIGTERM`` are ignored,
    so that the exit status is the one the command chose (143 after a ``SIGTERM``, however
    many followed it).
    """
    called = time.perf_counter()
    as_process = argv is None if as_process is None else as_process
    started = (process_start() if as_process else None) or called
    args = build_parser().parse_args(argv)
    args.started, args.as_process = started, as_process
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    previous = None
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        # turn `kill` into an exception, so that `finally` blocks remove temporary output
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args.make_options(args))
    except (CLIError, DataNotFoundError, UnknownModelError) as e:
        print(f"pyro-discrete {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(
            f"pyro-discrete {args.command}: training diverged: {e}; try a lower --lr",
            file=sys.stderr,
        )
        return 1
    except OSError as e:
        print(f"pyro-discrete {args.command}: error: {_os_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(
            f"pyro-discrete {args.command}: interrupted by {signal.Signals(signum).name}",
            file=sys.stderr,
        )
        return 128 + signum
    finally:
        if as_process and in_main_thread:
            # the process exits next with the status returned: a late signal must not
            # replace it by death by signal (-15) or a traceback
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.SIG_IGN)
        elif previous is not None:
            signal.signal(signal.SIGTERM, previous)
