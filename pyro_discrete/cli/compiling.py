r"""``--compile``: whether ``fit``, ``compare`` and ``demo`` train with a compiled step.

A compiled step (:class:`~pyro_discrete.infer.CompiledSVI`) records one SVI step as a
tensor program and replays it; it is built once per run and kept, because its programs
live in the object. ``--compile auto`` (the default) compiles where it pays:

- CUDA: yes, ``backend="auto"`` (one CUDA graph per step);
- CPU: with the ``trace`` backend, for a run with at least :data:`CPU_AUTO_MIN_STEPS`
  steps to train (recording costs a few eager steps' time, which a short run does not
  win back; ``docs/compiled.md`` has the measured speed-ups), and eagerly otherwise.
  ``trace+inductor`` is faster per step but compiles for a minute: ask for it with
  ``--compile-backend``.

An estimator whose step cannot be recorded (its adapter's ``not_compilable``) trains
eagerly under ``auto`` and is refused with ``--compile on``, before anything runs.

A compiled run's first three steps are its warm-up (eager, traced, first replay); its
loss is read to the host only every ``--log-every`` steps (:func:`.training.advance`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import torch

from pyro_discrete.infer import CompiledSVI
from pyro_discrete.infer.adapters import ESTIMATOR_CLASSES

from .errors import CLIError
from .tasks import split_estimator_label

__all__ = ["COMPILE_MODES", "COMPILE_BACKENDS", "StepChoice", "choose_step", "make_svi"]

COMPILE_MODES = ("auto", "on", "off")
COMPILE_BACKENDS = ("auto", "trace", "trace+inductor", "cuda_graph")

#: on the CPU, ``--compile auto`` compiles runs with at least this many steps to train
CPU_AUTO_MIN_STEPS = 200
#: steps before a compiled run replays: an eager one, a traced one and the first replay
COMPILED_WARMUP_STEPS = 3
EAGER_WARMUP_STEPS = 1


@dataclass(frozen=True)
class StepChoice:
    """How a run takes its steps: ``backend`` is ``None`` for Pyro's eager SVI."""

    backend: str | None
    #: one line for the run's output and report, e.g. ``"compiled: trace backend"``
    description: str

    @property
    def compiled(self) -> bool:
        return self.backend is not None

    @property
    def warmup_steps(self) -> int:
        """Steps slower than the steady ones (calibration and step-time quantiles skip them)."""
        return COMPILED_WARMUP_STEPS if self.compiled else EAGER_WARMUP_STEPS


EAGER = StepChoice(None, "eager: --compile off")


def _not_compilable(estimators: Sequence[str]) -> list[str]:
    names = [split_estimator_label(label)[0] for label in estimators]
    return [
        f"{name} ({ESTIMATOR_CLASSES[name].not_compilable})"
        for name in names
        if name in ESTIMATOR_CLASSES and ESTIMATOR_CLASSES[name].not_compilable
    ]


def choose_step(
    mode: str,
    backend: str,
    device: torch.device,
    steps: int | None = None,
    estimators: Sequence[str] = (),
) -> StepChoice:
    """The step of ``--compile MODE --compile-backend BACKEND`` on ``device``, for a run of
    ``steps`` steps still to train (``None``: not known) with ``estimators``.

    :raises CLIError: for an unknown mode or backend, a backend given with
        ``--compile off``, ``cuda_graph`` on a device that is not CUDA, or ``--compile on``
        with an estimator whose step cannot be compiled.
    """
    if mode not in COMPILE_MODES:
        raise CLIError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if backend not in COMPILE_BACKENDS:
        raise CLIError(
            f"--compile-backend must be one of {', '.join(COMPILE_BACKENDS)}, got {backend!r}"
        )
    on_cuda = device.type == "cuda"
    if mode == "off":
        if backend != "auto":
            raise CLIError(
                f"--compile-backend {backend} has no effect with --compile off; drop one of them"
            )
        return EAGER
    if backend == "cuda_graph" and not on_cuda:
        raise CLIError(
            f"--compile-backend cuda_graph needs --device cuda (the run is on {device}); use "
            "--compile-backend trace, or auto"
        )
    blocked = _not_compilable(estimators)
    if blocked and mode == "on":
        raise CLIError(
            f"--compile on: the step of estimator {'; '.join(blocked)} cannot be recorded as "
            "a tensor program; use --compile off (or auto, which trains it eagerly)"
        )
    if blocked:
        return StepChoice(None, f"eager: --compile auto, estimator {'; '.join(blocked)}")
    if mode == "auto" and not on_cuda and backend == "auto":
        if steps is None or steps < CPU_AUTO_MIN_STEPS:
            to_go = "steps not known in advance" if steps is None else f"{steps} steps to train"
            return StepChoice(
                None,
                f"eager: --compile auto compiles on {device.type.upper()} for runs of "
                f"{CPU_AUTO_MIN_STEPS} steps or more ({to_go}; --compile on to compile anyway)",
            )
        backend = "trace"
    if backend == "auto":
        backend = "cuda_graph" if on_cuda else "trace"
    return StepChoice(backend, f"compiled: {backend} backend")


def make_svi(model, guide, optim, elbo, step: StepChoice):
    """Pyro's :class:`~pyro.infer.SVI`, or a :class:`CompiledSVI` when ``step`` compiles.

    Build it once per run and keep it: a ``CompiledSVI``'s programs live in the object.
    """
    if not step.compiled:
        return pyro.infer.SVI(model, guide, optim, loss=elbo)
    return CompiledSVI(model, guide, optim, elbo, backend=step.backend)
