r"""The time budget of ``pyro-discrete compare``: the clock, the calibration and the plan.

``--time-budget T`` is the wall time of the whole command, from the start of the process
(or of :func:`~pyro_discrete.cli.main`, when called in-process) to the written report. It is
planned up front: a short calibration times one training step of every estimator, one ELBO
evaluation, one gradient-variance measurement, one importance-weighted bound and one plot,
then

.. math::

    T_{\text{train}} = T - t_{\text{so far}} - n_{\text{eval}} c_{\text{eval}}
        - n_{\text{var}} c_{\text{var}} - n_{\text{IW}} c_{\text{IW}} - c_{\text{report}}

is what is left for training: ``--equal steps`` turns it into a number of steps
(:math:`T_{\text{train}} / \sum_e c_e` over the runs), ``--equal time`` into a training time
per run (:math:`T_{\text{train}} / \#\text{runs}`). While training, every round checks with
the costs measured so far that the next round and everything after training still fit, and
training stops when they would not (:class:`BudgetClock` keeps the account).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from dataclasses import dataclass, field

import pyro
import torch

__all__ = ["PHASES", "BudgetClock", "Costs", "calibrate", "process_start"]

#: the phases a comparison's time is split into, in the report's order
PHASES = (
    "start-up",
    "calibration",
    "training",
    "evaluations",
    "gradient variance",
    "report",
)


def process_start() -> float | None:
    """When this process started, on the :func:`time.perf_counter` clock (Linux only).

    From ``/proc/self/stat`` (start time in clock ticks after boot) and ``/proc/uptime``:
    interpreter start-up and imports count against the budget like everything else.
    ``None`` where ``/proc`` is unavailable.
    """
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            # the command name (field 2) may hold spaces: count fields after its ')'
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        age = uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return time.perf_counter() - max(age, 0.0)


@dataclass
class BudgetClock:
    """Wall time since ``started`` and the seconds spent in each of :data:`PHASES`.

    Time outside every phase (switching runs, bookkeeping) is what :meth:`other` returns, so
    that the phases and "other" add up to the total.
    """

    started: float
    budget: float | None = None
    spent: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    planned: dict[str, float] = field(default_factory=dict)

    def now(self) -> float:
        """Seconds since the command started."""
        return time.perf_counter() - self.started

    def left(self) -> float:
        """Seconds until the budget is spent (infinite without a budget)."""
        return math.inf if self.budget is None else self.budget - self.now()

    @contextlib.contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.spent[name] += time.perf_counter() - t0

    def other(self, total: float) -> float:
        return total - sum(self.spent.values())


@dataclass
class Costs:
    """Seconds per operation, from the calibration and updated with what the run measures."""

    step: dict[str, float]  #: one steady training step of each estimator
    #: the first steps of each estimator: two (caches, networks), three when compiled
    first_steps: dict[str, float]
    variance_draw: dict[str, float]  #: one gradient draw of each estimator
    variance_setup: dict[str, float]  #: a fresh model with the reference run's parameters
    evaluation: float  #: one ELBO evaluation of one run
    iw_bound: float  #: one importance-weighted bound of one run
    report: float  #: results.csv, the plots and report.md

    def variance_point(self, estimators, samples: int) -> float:
        """One measurement point of one seed: every estimator, ``samples`` draws each."""
        return sum(self.variance_setup[e] + self.variance_draw[e] * samples for e in estimators)


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _plot_cost(lines: int, points: int) -> float:
    """Seconds to draw and save one PNG like the report's (imports matplotlib first)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    def draw():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        xs = list(range(points))
        for i in range(lines):
            ax.plot(xs, [x * i for x in xs], label=str(i))
            ax.fill_between(xs, xs, [x + 1 for x in xs], alpha=0.2)
        ax.legend()
        fig.tight_layout()
        fig.savefig(io.BytesIO(), dpi=110, format="png")
        plt.close(fig)

    draw()  # the first figure loads fonts: not what the report's three will cost
    return _time(draw)


def calibrate(task, s, device, init: dict, step_choice=None, steps: int = 8) -> Costs:
    """Time every operation of a comparison on throwaway runs (about ``steps`` steps each).

    ``step_choice`` (:class:`~pyro_discrete.cli.compiling.StepChoice`, default eager): a
    compiled run's first three steps (eager, traced, first replay) are timed as its
    first steps, and only replays as its steady step; each timed step reads its loss, so
    that a device's queued work is on the clock.
    """
    from ..compiling import EAGER
    from ..training import new_run
    from .measure import (
        control_variate_state,
        elbo_on_fixed_data,
        evaluation_data,
        iw_bound,
        variance_at,
    )

    eval_args = evaluation_data(task, s.eval_examples, s.seed, device)
    # one untimed step first: the first step of a process imports what the optimiser and the
    # estimators need (seconds, once), which is not a cost of each run
    # (a compiled step: its eager, traced and first replayed steps, which import the tracer)
    choice = step_choice or EAGER
    warm = new_run(
        task, s.estimators[0], s.lr, s.cv_lr_factor, s.batch_size, s.seed, device, init, choice
    )
    warm_batch = task.args(warm.loader.next_batch())
    for _ in range(choice.warmup_steps):
        float(warm.svi.step(*warm_batch))
    # eager: the first two steps build caches and networks; compiled: eager, trace, replay
    first_count = max(2, choice.warmup_steps)
    step, first, draw, setup = {}, {}, {}, {}
    evaluation = iw = math.inf
    for name in s.estimators:
        run = new_run(task, name, s.lr, s.cv_lr_factor, s.batch_size, s.seed, device, init, choice)
        svi = run.svi
        batch = task.args(run.loader.next_batch())
        first[name] = _time(lambda: [float(svi.step(*batch)) for _ in range(first_count)])  # noqa: B023
        # the median of single steps: one step slowed by another process does not set the plan
        step[name] = sorted(_time(lambda: float(svi.step(*batch))) for _ in range(steps))[  # noqa: B023
            steps // 2
        ]
        evaluation = min(evaluation, _time(lambda: elbo_on_fixed_data(run, eval_args, 0)))  # noqa: B023
        if s.iw_samples and iw == math.inf:
            valid = task.args(task.split_rows("valid")[: s.eval_examples].to(device))
            k = min(s.iw_samples, 5)
            iw = _time(lambda: iw_bound(run.model, valid, k, 0)) * s.iw_samples / k  # noqa: B023
        state, cv = run.model.state_dict(), control_variate_state()

        def variance(samples):
            return _time(lambda: variance_at(task, name, state, cv, batch, samples, 0, device))  # noqa: B023

        # two sizes separate the set-up (a fresh model, its modules) from the draws
        few, more = variance(2), variance(6)
        draw[name] = max((more - few) / 4, few / 4)
        setup[name] = max(few - 2 * draw[name], 0.0)
    pyro.clear_param_store()
    plot = _plot_cost(len(s.estimators), max(s.eval_points, 2) + 1)
    torch.manual_seed(s.seed)  # calibration draws leave no trace in the runs' streams
    return Costs(
        step=step,
        first_steps=first,
        variance_draw=draw,
        variance_setup=setup,
        evaluation=evaluation,
        iw_bound=iw if s.iw_samples else 0.0,
        # three plots, holding more points and bands than the probe (measured: 2-5 probes
        # for the three on a loaded machine)
        report=3.5 * plot + 0.1,
    )
