"""The argument parser of ``pyro-discrete``.

Options that several subcommands share are declared once, in parent parsers
(:func:`_run_options`, :func:`_optimisation_options`), and inherited with ``parents=``.
"""

from __future__ import annotations

import argparse

from pyro_discrete.infer import ESTIMATORS
from pyro_discrete.models import MODEL_SPECS

from .compare import CompareOptions, cmd_compare
from .compiling import COMPILE_BACKENDS, COMPILE_MODES
from .demo import DEMO_ESTIMATORS, cmd_demo
from .evaluate import add_evaluate_parser
from .fit import cmd_fit
from .options import (
    FIT_DEFAULTS,
    FitOptions,
    non_negative_int,
    positive_float,
    positive_int,
    seed_number,
)

__all__ = ["build_parser"]

_THREADS_HELP = (
    "torch intra-op threads (default 1: a batch-24 step is too small to gain from more, and "
    "threads that share cores with other processes make each step several times slower; "
    "measured on 2 busy cores, REINFORCE 7.3 ms/step with 1 thread, 28 ms with 2)"
)


class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` where there is a default the help text does not state."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            action.default not in (None, False, argparse.SUPPRESS)
            and "default" not in text
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def _run_options(model_default: str | None) -> argparse.ArgumentParser:
    """Model, data, device, seed and display options of ``fit``, ``compare`` and ``demo``."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--model",
        default=model_default,
        help=f"one of: {', '.join(MODEL_SPECS)}",
    )
    p.add_argument(
        "--data",
        default=None,
        choices=sorted({data for spec in MODEL_SPECS.values() for data in spec.data}),
        help="data set (default: the model's first): "
        + "; ".join(f"{spec.name}: {', '.join(spec.data)}" for spec in MODEL_SPECS.values()),
    )
    p.add_argument(
        "--binarization",
        default="static",
        choices=["static", "dynamic"],
        help="one fixed Bernoulli draw of the images, or a fresh one per batch",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="auto",
        help="train with a compiled step (CompiledSVI, docs/compiled.md): auto compiles on "
        "CUDA, where it is faster, and not on CPU, where it is not reliably faster",
    )
    p.add_argument(
        "--compile-backend",
        choices=COMPILE_BACKENDS,
        default="auto",
        help="CompiledSVI backend: auto (cuda_graph on CUDA, trace on CPU), trace, "
        "trace+inductor (faster steps, minutes to compile), cuda_graph (CUDA only)",
    )
    p.add_argument(
        "--seed",
        type=seed_number,
        default=0,
        help="seed of the initialisation, data order and binarisation",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--threads", type=positive_int, default=1, help=_THREADS_HELP)
    return p


def _optimisation_options() -> argparse.ArgumentParser:
    """Minibatch size and learning rates, shared by every subcommand that trains.

    A fresh parent for each subcommand: ``parents=`` shares the action objects, and
    ``set_defaults`` (``demo``'s own learning rate) would change them for every subcommand.
    """
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--batch-size", type=positive_int, default=24, help="minibatch size")
    p.add_argument(
        "--lr", type=positive_float, default=3e-4, help="Adam learning rate of the model"
    )
    p.add_argument(
        "--cv-lr-factor",
        type=positive_float,
        default=10.0,
        help="control-variate learning rate as a multiple of --lr",
    )
    return p


def _add_fit(sub) -> None:
    fit = sub.add_parser(
        "fit",
        help="train one model with one estimator",
        formatter_class=_DefaultsHelpFormatter,
        parents=[_run_options(None), _optimisation_options()],
        description="Train one model with one estimator; checkpoints every --checkpoint-every "
        "steps, and --resume continues a run exactly.",
    )
    fit.add_argument("--estimator", default=None, help=f"one of: {', '.join(ESTIMATORS)}")
    fit.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="total training steps",
    )
    fit.add_argument("--out", required=True, help="run directory")
    fit.add_argument("--resume", action="store_true", help="continue the run in --out")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    fit.add_argument(
        "--checkpoint-every", type=positive_int, default=1000, help="steps between checkpoints"
    )
    fit.add_argument(
        "--log-every", type=positive_int, default=50, help="steps between rows of metrics.csv"
    )
    fit.add_argument(
        "--eval-examples",
        type=positive_int,
        default=1000,
        help="validation examples for the final ELBO",
    )
    # data-parallel training through Lightning (pyro_discrete.cli.parallel)
    fit.add_argument(
        "--devices", type=positive_int, default=1, help="processes (CPU) or GPUs per machine"
    )
    fit.add_argument("--num-nodes", type=positive_int, default=1, help="machines")
    fit.add_argument(
        "--accelerator", choices=["cpu", "gpu"], default="cpu", help="with --devices > 1"
    )
    fit.add_argument(
        "--strategy",
        choices=["ddp"],
        default=None,
        help="train through Lightning's Trainer (implied by --devices or --num-nodes > 1)",
    )
    # the training options of fit default to None, "not given": a new run takes
    # FIT_DEFAULTS, a resumed run its own values (and refuses a given one that differs)
    for action in fit._actions:
        if action.dest in FIT_DEFAULTS:
            shown = "the model's first" if action.dest == "data" else FIT_DEFAULTS[action.dest]
            action.help = f"{action.help} (default {shown}, or the run's own on --resume)"
    fit.set_defaults(
        func=cmd_fit, make_options=FitOptions.from_namespace, **dict.fromkeys(FIT_DEFAULTS)
    )


def _comparison_options(
    p: argparse.ArgumentParser, steps: int, out: str | None, budget: float | None
) -> None:
    p.set_defaults(default_steps=steps)
    p.add_argument(
        "--estimators",
        default=",".join(DEMO_ESTIMATORS),
        help="comma-separated, from: "
        f"{', '.join(ESTIMATORS)}; name:K runs name with K particles (rloo:201), e.g. to "
        "compare at equal evaluations of the model (the report counts them per step)",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help=f"training steps per run (default {steps}; an upper bound under --time-budget; "
        "not with --equal time)",
    )
    p.add_argument(
        "--time-budget",
        type=positive_float,
        default=budget,
        help="seconds of wall time for the whole command, evaluations and report included, "
        "from its start: a short calibration times steps and measurements, the rest is "
        "planned and kept (within 5%%); report.md says how it was spent",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=1,
        help="independent initialisations and data orders per estimator (seeds --seed, "
        "--seed+1, ...); with 2 or more the report gives 95%% intervals over seeds and ranks "
        "only estimators whose difference is outside the noise",
    )
    p.add_argument(
        "--equal",
        choices=["steps", "time"],
        default="steps",
        help="what every run gets the same of: training steps, or training wall time "
        "(needs --time-budget)",
    )
    p.add_argument(
        "--reference",
        default=None,
        help="estimator whose trajectory fixes the parameters at which every "
        "gradient variance is measured (default rebar if listed, else first)",
    )
    p.add_argument(
        "--variance-points",
        type=positive_int,
        default=5,
        help="points of the reference run where variances are measured",
    )
    p.add_argument(
        "--variance-samples",
        type=positive_int,
        default=100,
        help="gradient draws per estimator and point",
    )
    p.add_argument(
        "--eval-points",
        type=positive_int,
        default=20,
        help="points of each run where the ELBO is evaluated",
    )
    p.add_argument(
        "--eval-examples",
        type=positive_int,
        default=2000,
        help="training examples for the ELBO curves (and validation examples for --iw-samples)",
    )
    p.add_argument(
        "--iw-samples",
        type=non_negative_int,
        default=0,
        help="also report a K-sample importance-weighted bound on validation examples (0: skip)",
    )
    p.add_argument(
        "--out",
        default=out,
        required=out is None,
        help="output directory (written whole at the end)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _add_compare_and_demo(sub) -> None:
    compare = sub.add_parser(
        "compare",
        help="train several estimators from one start",
        parents=[_run_options("sbn_linear1"), _optimisation_options()],
        formatter_class=_DefaultsHelpFormatter,
        description="Train every estimator from the same initialisation on the same minibatches "
        "(taking turns), measure their gradient variance at shared parameter values, and write "
        "report.md, results.csv and PNG plots to --out.",
    )
    _comparison_options(compare, 2000, None, None)
    compare.set_defaults(func=cmd_compare, make_options=CompareOptions.from_namespace)

    demo = sub.add_parser(
        "demo",
        help="compare reinforce, nvil, muprop, rebar, relax on binarised MNIST with "
        "the linear one-layer belief net (under 10 minutes on 2 CPU cores)",
        parents=[_run_options("sbn_linear1"), _optimisation_options()],
        formatter_class=_DefaultsHelpFormatter,
        description="`compare` with settings for a first look (what `make demo` runs): the "
        "linear one-layer belief net on statically binarised MNIST, five estimators, as many "
        "steps as --time-budget allows.",
    )
    _comparison_options(demo, 20000, "runs/demo", 480.0)
    demo.set_defaults(
        func=cmd_demo,
        make_options=CompareOptions.from_namespace,
        lr=1e-3,
        iw_samples=100,
        eval_examples=1000,
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-discrete`` parser with its four subcommands."""
    parser = argparse.ArgumentParser(
        prog="pyro-discrete",
        description="Train and compare gradient estimators for discrete latent variables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_fit(sub)
    _add_compare_and_demo(sub)
    add_evaluate_parser(sub, _DefaultsHelpFormatter)
    return parser
