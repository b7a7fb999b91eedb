"""``pyro-discrete compare``: train several estimators from the same starts, taking turns.

For every seed :math:`i` of ``--seeds N`` (``--seed``, ``--seed + 1``, ...), every estimator
starts from the same initialisation and sees the same minibatches; different seeds give
independent initialisations and data orders, so that the spread over seeds says how much of
a difference between estimators is noise. All runs take turns in short rounds
(:mod:`~pyro_discrete.cli.compare.schedule`), so that changes in machine load affect them
alike; each run keeps its own param store and RNG stream between turns, so the result does
not depend on the interleaving.

``--equal steps`` (the default) gives every run the same number of steps; ``--equal time``
the same training wall time (the number of steps then differs). At the evaluation
boundaries the ELBO is evaluated on fixed data (on its own RNG stream, off the training
clock), and at the variance boundaries every estimator's gradient variance is measured at
the reference run's parameters of the same seed, with its own control-variate state (REBAR
paper, Tucker et al. 2017, Fig. 2). ``--time-budget`` is planned and kept as
:mod:`~pyro_discrete.cli.compare.budget` describes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..compiling import choose_step
from ..run import Run
from ..tasks import make_device, make_task
from . import report
from .budget import BudgetClock
from .comparison import Comparison
from .plan import plan_comparison
from .settings import CompareOptions, CompareSettings

__all__ = ["cmd_compare", "compare_into", "run_compare"]


def run_compare(
    s: CompareSettings,
    out: Path,
    progress: bool = True,
    started: float | None = None,
    as_process: bool = False,
) -> Path:
    """Train every estimator from each seed's initialisation and write the report to ``out``.

    ``started``: when the command started (:func:`time.perf_counter`), the origin of
    ``--time-budget``; default now. ``as_process``: the command is the whole process, whose
    exit after the report is planned for.
    """
    clock = BudgetClock(time.perf_counter() if started is None else started, s.time_budget)
    clock.spent["start-up"] = clock.now()
    with clock.phase("start-up"):
        device = make_device(s.device)
        task = make_task(s.model, s.data, s.binarization, s.seed)
        cmp = Comparison(s, task, device, clock)
    schedule = plan_comparison(cmp, as_process)
    with clock.phase("start-up"):
        cmp.start_runs()
    with clock.phase("evaluations"):
        cmp.evaluate()  # step 0: every curve starts at its initialisation
    print(f"compare: {cmp.step_choice.description}", file=sys.stderr)
    cmp.train(schedule, progress)
    cmp.finish()
    cmp.outcome.schedule_total = schedule.total
    report.write_report(out, cmp.outcome, clock)
    return out / "report.md"


def compare_into(
    out: Path,
    overwrite: bool,
    settings: CompareSettings,
    progress: bool,
    started: float | None = None,
    as_process: bool = False,
) -> Path:
    """:func:`run_compare`, published into ``out`` whole by
    :meth:`~pyro_discrete.cli.run.Run.publish` (locked while it runs, renamed into place
    when complete).

    An interrupted or failed comparison leaves no directory that looks like a finished report.
    """
    device = make_device(settings.device)
    choose_step(settings.compile, settings.compile_backend, device, None, settings.estimators)
    with Run.publish(out, overwrite, "pyro-discrete compare") as built:
        run_compare(settings, built, progress, started, as_process)
    return out / "report.md"


def cmd_compare(options: CompareOptions) -> int:
    """Compare ``--estimators`` and write the report into ``--out``."""
    written = compare_into(
        options.out,
        options.overwrite,
        options.settings,
        options.progress,
        options.started,
        options.as_process,
    )
    print(f"report written to {written}")
    return 0
