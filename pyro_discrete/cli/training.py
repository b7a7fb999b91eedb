"""The training loop shared by ``fit`` and ``compare``: a run's state and how it advances."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import torch
from torch import Tensor, nn

from pyro_discrete.datasets import MinibatchIterator
from pyro_discrete.infer import DiscreteELBO
from pyro_discrete.optim import MultiTensorAdam

from .compiling import EAGER, StepChoice, make_svi
from .tasks import Task, make_elbo, make_optimizer

__all__ = [
    "EMA",
    "RunState",
    "advance",
    "new_run",
    "register_modules",
]


class EMA:
    r"""Bias-corrected exponential moving average, as Adam corrects its moments:
    :math:`m_t = \beta m_{t-1} + (1 - \beta) x_t`, reported as :math:`m_t / (1 - \beta^t)`."""

    def __init__(self, decay: float = 0.98):
        self.decay, self.value, self.count = decay, 0.0, 0

    def update(self, x: float) -> float:
        self.count += 1
        self.value = self.decay * self.value + (1 - self.decay) * x
        return self.value / (1 - self.decay**self.count)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "value": self.value, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.value, self.count = state["decay"], state["value"], state["count"]


def _non_finite_parameter() -> str | None:
    for name, value in pyro.get_param_store().named_parameters():
        if value.is_floating_point() and not torch.isfinite(value).all():
            return name
    return None


@dataclass
class RunState:
    """A training run in progress: model, loss, optimiser and data position."""

    task: Task
    model: nn.Module
    elbo: DiscreteELBO
    optim: MultiTensorAdam
    loader: MinibatchIterator
    name: str = ""
    step: int = 0
    elapsed: float = 0.0
    #: time spent in ``on_step`` callbacks on evaluation, not counted as training time
    excluded: float = 0.0
    #: training time of step 1 (estimators build caches and networks on their first step)
    first_step_s: float | None = None
    history: list[dict] = field(default_factory=list)
    #: seconds of every step trained in this process (``compare`` reports their spread)
    step_times: list[float] = field(default_factory=list)
    ema: EMA = field(default_factory=EMA)
    smoothed: float = float("nan")
    #: eager or compiled steps (``--compile``)
    step_choice: StepChoice = EAGER
    #: ``(step, loss, batch size)`` of the steps whose loss is not yet read to the host
    pending: list[tuple[int, Tensor | float, int]] = field(default_factory=list)
    _svi: object = field(default=None, repr=False)

    @property
    def train_time(self) -> float:
        return self.elapsed - self.excluded

    @property
    def svi(self):
        """The run's SVI, built on first use and kept (a compiled one holds its programs)."""
        if self._svi is None:
            self._svi = make_svi(
                self.model.model, self.model.guide, self.optim, self.elbo, self.step_choice
            )
        return self._svi

    def sync(self) -> None:
        """Read the pending losses to the host (one sync) and fold them into the EMA.

        :raises FloatingPointError: naming the first step whose loss is not finite, and
            the steps read at this sync.
        """
        if not self.pending:
            return
        steps = [s for s, _, _ in self.pending]
        losses = [loss for _, loss, _ in self.pending]
        if all(torch.is_tensor(x) for x in losses):
            values = torch.stack([x.detach().reshape(()) for x in losses]).tolist()
        else:
            values = [float(x) for x in losses]
        sizes = [n for _, _, n in self.pending]
        self.pending.clear()
        for step, value, size in zip(steps, values, sizes, strict=True):
            if not math.isfinite(value):
                read = f"step {step}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"
                raise FloatingPointError(
                    f"{self.name}: loss became {value} at step {step} (losses of {read} read "
                    "at this sync)"
                )
            self.smoothed = -self.ema.update(value / size)


def _show_progress(bar, run: RunState) -> None:
    rate = run.step / run.train_time if run.train_time > 0 else float("nan")
    bar.set_postfix(
        estimator=run.name, elbo=f"{run.smoothed:.2f}", steps_per_s=f"{rate:.1f}", refresh=False
    )


def advance(
    run: RunState,
    until: int,
    *,
    bar=None,
    log_every: int = 50,
    on_step: Callable[[RunState], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> None:
    """Run SVI until ``run.step == until``; ``on_step`` runs after every step.

    Stops early, between steps, once ``stop()`` is true.

    An eager step's loss is a Python float, read at every step. A compiled step returns a
    device tensor without waiting for the device; its losses are read together (one host
    sync, :meth:`RunState.sync`) every ``log_every`` steps, at ``until`` and when stopping.

    ``run.elapsed`` accumulates only the time spent here, so runs that take turns (see
    :func:`~pyro_discrete.cli.compare.run.run_compare`) each count their own training time.

    :raises FloatingPointError: when the loss is not finite (compiled steps: at the sync
        that reads it, naming the step).
    """
    svi = run.svi
    start = time.perf_counter() - run.elapsed
    while run.step < until:
        batch = run.loader.next_batch()
        t_step = time.perf_counter()
        try:
            loss = svi.step(*run.task.args(batch))
        except ValueError as e:
            # a distribution's argument check failing on values that are no longer finite
            # (parameters, or what overflowing parameters compute): the same divergence that
            # a compiled step reports at its sync
            name = _non_finite_parameter()
            if name is None and "found invalid values" not in str(e):
                raise
            where = f"parameter {name!r}" if name else "the model's distribution arguments"
            first = str(e).splitlines()[0].split(" of distribution")[0][:100]
            raise FloatingPointError(
                f"{run.name}: {where} became NaN or infinite at step {run.step + 1} ({first})"
            ) from None
        run.step_times.append(time.perf_counter() - t_step)
        run.step += 1
        run.pending.append((run.step, loss, batch.shape[0]))
        log_point = run.step % log_every == 0 or run.step == until
        if not torch.is_tensor(loss) or log_point:
            run.sync()
        run.elapsed = time.perf_counter() - start
        if run.step == 1:
            run.first_step_s = run.train_time
        if log_point:
            run.history.append(
                {"step": run.step, "wall_time_s": run.train_time, "train_elbo_ema": run.smoothed}
            )
            if bar is not None:
                _show_progress(bar, run)
        if bar is not None:
            bar.update(1)
        if on_step is not None:
            on_step(run)
            # the callback's own time is on the clock now; it subtracts what it excludes
            run.elapsed = time.perf_counter() - start
        if stop is not None and stop():
            run.sync()
            return


def new_run(
    task: Task,
    estimator: str,
    lr: float,
    cv_factor: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    init_state: dict | None = None,
    step_choice: StepChoice = EAGER,
) -> RunState:
    """A fresh run: cleared param store, seeded RNG, a new model (or ``init_state``).

    ``step_choice``: eager or compiled steps (:func:`~pyro_discrete.cli.compiling.choose_step`).
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = task.build_model()
    if init_state is not None:
        model.load_state_dict(init_state)
    model.to(device)
    loader = task.loader(batch_size, seed, device)
    return RunState(
        task,
        model,
        make_elbo(estimator),
        make_optimizer(lr, cv_factor),
        loader,
        name=estimator,
        step_choice=step_choice,
    )


def register_modules(model: nn.Module, args: tuple) -> None:
    """One trace of guide and model, which registers their modules with the param store."""
    with torch.no_grad():
        tr = pyro.poutine.trace(model.guide).get_trace(*args)
        pyro.poutine.trace(pyro.poutine.replay(model.model, trace=tr)).get_trace(*args)
