"""What ``compare`` and ``demo`` compare (:class:`CompareSettings`) and the command's options
(:class:`CompareOptions`), built from the parsed command line once."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from pyro_discrete.infer import ESTIMATORS

from ..errors import CLIError
from ..tasks import check_estimators_apply, data_for, make_elbo, split_estimator_label

__all__ = ["CompareOptions", "CompareSettings", "compare_settings", "estimator_list"]


def estimator_list(text: str) -> list[str]:
    """The ``--estimators`` list; an entry ``name:K`` runs ``name`` with ``K`` particles
    (``rloo:201``), and is the run's label in the report.

    :raises CLIError: if empty, unknown, repeated, or with a bad number of particles.
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CLIError("--estimators is empty; give a comma-separated list, e.g. reinforce,rebar")
    unknown = [n for n in names if split_estimator_label(n)[0] not in ESTIMATORS]
    if unknown:
        raise CLIError(
            f"unknown estimator(s) {', '.join(map(repr, unknown))}; valid names: "
            f"{', '.join(ESTIMATORS)}"
        )
    if len(set(names)) != len(names):
        raise CLIError(f"--estimators lists a name twice: {text}")
    for name in names:
        if split_estimator_label(name)[1] is not None:
            try:  # e.g. a multi-sample estimator given one particle
                make_elbo(name)
            except ValueError as error:
                raise CLIError(f"--estimators {name}: {error}") from error
    return names


@dataclass
class CompareSettings:
    model: str
    estimators: list[str]
    steps: int
    batch_size: int
    lr: float
    cv_lr_factor: float
    seed: int
    data: str
    binarization: str
    device: str
    reference: str
    variance_points: int
    variance_samples: int
    eval_points: int
    eval_examples: int
    iw_samples: int
    time_budget: float | None
    #: independent initialisations and data orders per estimator
    seeds: int = 1
    #: ``"steps"``: the same number of steps for every run; ``"time"``: the same training time
    equal: str = "steps"
    #: ``--compile`` and ``--compile-backend`` (:func:`~.compiling.choose_step`)
    compile: str = "auto"
    compile_backend: str = "auto"

    @property
    def planned_steps(self) -> int | None:
        """The steps each run trains, where known before training (``--equal steps``)."""
        return self.steps if self.equal == "steps" else None

    def run_seed(self, index: int) -> int:
        """The seed of the ``index``-th initialisation and data order."""
        return self.seed + index


def compare_settings(args: argparse.Namespace) -> CompareSettings:
    """:class:`CompareSettings` from the parsed options; :raises CLIError: on bad values."""
    estimators = estimator_list(args.estimators)
    reference = args.reference or ("rebar" if "rebar" in estimators else estimators[0])
    if reference not in estimators:
        raise CLIError(
            f"--reference {reference} is not among --estimators ({', '.join(estimators)})"
        )
    if args.equal == "time" and args.time_budget is None:
        raise CLIError(
            "--equal time needs --time-budget: the training time per run is what the budget "
            "leaves after calibration, evaluations and the report"
        )
    if args.equal == "time" and args.steps is not None:
        raise CLIError(
            "--steps has no effect with --equal time (every run trains for the same time); "
            "drop --steps, or use --equal steps"
        )
    steps = args.default_steps if args.steps is None else args.steps
    if steps < 1 or args.batch_size < 1:
        raise CLIError("--steps and --batch-size must be positive")
    if args.seeds < 1:
        raise CLIError("--seeds must be at least 1")
    if args.variance_samples < 2:
        raise CLIError("--variance-samples must be at least 2")
    data = data_for(args.model, args.data)  # refuses an unknown model first
    check_estimators_apply(estimators, args.model)
    return CompareSettings(
        model=args.model,
        estimators=list(estimators),
        steps=steps if args.equal == "steps" else sys.maxsize,
        batch_size=args.batch_size,
        lr=args.lr,
        cv_lr_factor=args.cv_lr_factor,
        seed=args.seed,
        data=data,
        binarization=args.binarization,
        device=args.device,
        reference=reference,
        variance_points=args.variance_points,
        variance_samples=args.variance_samples,
        eval_points=args.eval_points,
        eval_examples=args.eval_examples,
        iw_samples=args.iw_samples,
        time_budget=args.time_budget,
        seeds=args.seeds,
        equal=args.equal,
        compile=args.compile,
        compile_backend=args.compile_backend,
    )



@dataclass(frozen=True)
class CompareOptions:
    """``pyro-discrete compare`` and ``demo``: what is compared
    (:class:`~pyro_discrete.cli.compare.CompareSettings`) and where the report goes."""

    settings: CompareSettings
    out: Path
    overwrite: bool
    progress: bool
    #: when the command started (:func:`time.perf_counter`), the origin of --time-budget
    started: float | None = None
    #: whether the command is the whole process (its exit is planned for)
    as_process: bool = False

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> CompareOptions:
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
