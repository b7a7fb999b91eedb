"""What both backends build: a :class:`Program` that replays one step."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class Program(Protocol):
    """One recorded step, replayable for the input structure it was built for.

    :meth:`run` takes the step's input tensors (in :func:`~.inputs.input_key` order) and
    returns the loss, a 0-dim boolean tensor saying whether the step was finite (a step
    that is not changes no state), and the gradients of :attr:`params` when the optimizer
    is stepped eagerly (else an empty list).
    """

    #: parameters whose gradients :meth:`run` returns (optimizers without a tensor rule)
    params: list[Tensor]
    #: the sample sites of the recorded step: name -> (distribution, shape, observed)
    sites: dict
    #: the modules whose forward the step ran, and their training modes when recorded
    modules: list
    modes: tuple
    #: replays so far (for ``check_every``)
    calls: int
    #: the param store and optimizer it was recorded against (see CompiledSVI._guard)
    guard: tuple

    def run(self, tensors: list[Tensor]) -> tuple[Tensor, Tensor, list[Tensor | None]]: ...
