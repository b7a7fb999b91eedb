"""The options of each subcommand, as one typed record built from the parsed command line once.

The parser (:mod:`~pyro_discrete.cli.parser`) checks every value on its own (positive,
finite, in range); ``from_namespace`` turns its result into :class:`FitOptions`,
:class:`EvaluateOptions` or :class:`~pyro_discrete.cli.compare.CompareOptions`, and the
subcommands read nothing else.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from pathlib import Path

from .rundir import FORMAT_VERSION, TRAINING_OPTIONS
from .tasks import check_estimators_apply, check_model_name, data_for, make_elbo

__all__ = [
    "FIT_DEFAULTS",
    "EvaluateOptions",
    "FitOptions",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "seed_number",
]

#: what a new ``fit`` run uses for the training options not given (``data``: the model's
#: first data set); a resumed run keeps its own
FIT_DEFAULTS = {
    "model": "sbn_linear1",
    "estimator": "reinforce",
    "data": None,
    "binarization": "static",
    "batch_size": 24,
    "lr": 3e-4,
    "cv_lr_factor": 10.0,
    "seed": 0,
    "steps": 1000,
}


# -- the value types of the parser: each refuses what cannot be right, naming it


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


#: seeds reach numpy's generator, which takes 0 to 2**32 - 1; comparisons add offsets
MAX_SEED = 2**31 - 1


def seed_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be from 0 to {MAX_SEED}, got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (``nan``, ``inf`` and ``1e400``, which is ``inf``, are not)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def _from_namespace(cls, args: argparse.Namespace, **values):
    for f in fields(cls):
        if f.name not in values:
            values[f.name] = getattr(args, f.name)
    return cls(**values)


@dataclass(frozen=True)
class FitOptions:
    """``pyro-discrete fit``. The training options (:data:`FIT_DEFAULTS`) are ``None`` where
    not given on the command line."""

    out: Path
    resume: bool
    overwrite: bool
    model: str | None
    estimator: str | None
    data: str | None
    binarization: str | None
    batch_size: int | None
    lr: float | None
    cv_lr_factor: float | None
    seed: int | None
    steps: int | None
    checkpoint_every: int
    log_every: int
    eval_examples: int
    device: str
    compile: str
    compile_backend: str
    progress: bool
    #: data-parallel training through Lightning (:mod:`~pyro_discrete.cli.parallel`)
    devices: int = 1
    num_nodes: int = 1
    accelerator: str = "cpu"
    strategy: str | None = None

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> FitOptions:
        return _from_namespace(cls, args, out=Path(args.out), progress=not args.no_progress)

    @property
    def given(self) -> dict[str, object]:
        """The training options given on the command line."""
        return {
            key: getattr(self, key) for key in TRAINING_OPTIONS if getattr(self, key) is not None
        }

    @property
    def parallel(self) -> bool:
        """Whether the run trains through Lightning (:mod:`~pyro_discrete.cli.parallel`)."""
        return self.devices > 1 or self.num_nodes > 1 or self.strategy is not None

    def new_run_config(self, device: str) -> dict:
        """The ``config.json`` of a new run: the options given, :data:`FIT_DEFAULTS` for the
        others, each name checked before any data is loaded.

        :raises CLIError: for an unknown model or estimator, an estimator that cannot
            handle the model's latent sites, or data the model does not use.
        """
        config: dict = {"format_version": FORMAT_VERSION}
        for key in (*TRAINING_OPTIONS, "steps"):
            value = getattr(self, key)
            config[key] = FIT_DEFAULTS[key] if value is None else value
        make_elbo(config["estimator"])
        check_model_name(config["model"])
        check_estimators_apply([config["estimator"]], config["model"])
        config["data"] = data_for(config["model"], config["data"])
        config["device"] = device
        return config


@dataclass(frozen=True)
class EvaluateOptions:
    """``pyro-discrete evaluate``."""

    checkpoint: Path
    samples: list[int]
    split: str
    max_examples: int | None
    batch_size: int
    model: str | None
    device: str
    seed: int
    json: Path | None

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> EvaluateOptions:
        return _from_namespace(
            cls,
            args,
            checkpoint=Path(args.checkpoint),
            json=None if args.json is None else Path(args.json),
        )
