"""The options of each subcommand, as one typed record built from the parsed command line once.

The parser (:mod:`~pyro_discrete.cli.parser`) checks every value on its own (positive,
finite, in range); :meth:`from_namespace` turns its result into :class:`FitOptions`,
:class:`CompareOptions` or :class:`EvaluateOptions`, and the subcommands read nothing else.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import CLIError
from .rundir import TRAINING_OPTIONS
from .tasks import check_model_name, data_for, make_elbo

__all__ = ["FIT_DEFAULTS", "CompareOptions", "EvaluateOptions", "FitOptions"]

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

        :raises CLIError: for an unknown model or estimator, or data the model does not use.
        """
        from .rundir import FORMAT_VERSION

        config: dict = {"format_version": FORMAT_VERSION}
        for key in (*TRAINING_OPTIONS, "steps"):
            value = getattr(self, key)
            config[key] = FIT_DEFAULTS[key] if value is None else value
        make_elbo(config["estimator"])
        check_model_name(config["model"])
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


@dataclass(frozen=True)
class CompareOptions:
    """``pyro-discrete compare`` and ``demo``: what is compared
    (:class:`~pyro_discrete.cli.compare.CompareSettings`) and where the report goes."""

    settings: object  # CompareSettings (imported lazily: compare imports this module)
    out: Path
    overwrite: bool
    progress: bool
    #: when the command started (:func:`time.perf_counter`), the origin of --time-budget
    started: float | None = None
    #: whether the command is the whole process (its exit is planned for)
    as_process: bool = False

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> CompareOptions:
        from .compare import compare_settings

        if args.out is None:
            raise CLIError("--out is required")
        return cls(
            settings=compare_settings(args),
            out=Path(args.out),
            overwrite=args.overwrite,
            progress=not args.no_progress,
            started=getattr(args, "started", None),
            as_process=getattr(args, "as_process", False),
        )
