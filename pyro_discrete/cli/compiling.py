r"""``--compile``: whether ``fit``, ``compare`` and ``demo`` train with a compiled step.

A compiled step (:class:`~pyro_discrete.infer.CompiledSVI`) records one SVI step as a
tensor program and replays it; it is built once per run and kept, because its programs
live in the object. ``--compile auto`` (the default) compiles where it is reliably faster:

- CUDA: yes, ``backend="auto"`` (one CUDA graph per step);
- CPU: no. The traced replay measured 0.75-1.8x the speed of the eager step, depending on
  model and estimator, and ``trace+inductor`` is faster but compiles for minutes (see
  ``docs/compiled.md``). ``--compile on`` compiles there with the ``trace`` backend.

A compiled run's first three steps are its warm-up (eager, traced, first replay); its
loss is read to the host only every ``--log-every`` steps (:func:`.training.advance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import torch

from pyro_discrete.infer import CompiledSVI

from .errors import CLIError

__all__ = ["COMPILE_MODES", "COMPILE_BACKENDS", "StepChoice", "choose_step", "make_svi"]

COMPILE_MODES = ("auto", "on", "off")
COMPILE_BACKENDS = ("auto", "trace", "trace+inductor", "cuda_graph")

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


def choose_step(mode: str, backend: str, device: torch.device) -> StepChoice:
    """The step of ``--compile MODE --compile-backend BACKEND`` on ``device``.

    :raises CLIError: for an unknown mode or backend, a backend given with
        ``--compile off``, or ``cuda_graph`` on a device that is not CUDA.
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
    if mode == "auto" and not on_cuda and backend == "auto":
        return StepChoice(
            None,
            f"eager: --compile auto is off on {device.type.upper()} (not faster here; see "
            "docs/compiled.md; --compile on to compile anyway)",
        )
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
