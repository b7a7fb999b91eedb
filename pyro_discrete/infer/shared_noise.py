r"""Two evaluations that draw the same noise: REBAR's and RELAX's relaxed passes.

REBAR's control variate is one function evaluated at two points,
:math:`c(z)` and :math:`c(\tilde z)`. When the model or guide draws other random numbers
after the relaxed site (a reparameterised continuous site, dropout), both passes must see
the same draws, or :math:`c(z) - c(\tilde z)` gains variance (it stays unbiased either
way: noise independent of :math:`z` and of the site's logits averages out of every term).

Eagerly the two passes share noise by saving and restoring the generator's state. Inside a
compiled step (:class:`~pyro_discrete.infer.CompiledSVI`) that is impossible: a traced
program has no "generator state" operation, and CUDA-graph capture forbids reading it. There
the first pass *records* every draw whose values do not depend on tensor inputs (uniform,
normal, exponential, ... fills; ``rand``/``randn``/``randint``/``randperm``), and the second
pass *reuses* the recorded values, which is what restoring the state would have produced.
Draws that depend on tensor values (``bernoulli(p)``, ``multinomial``, ``normal(mean,
std)`` with tensor arguments, dropout) are drawn afresh in the second pass: independent
noise there is still unbiased by the argument above.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

#: set while CompiledSVI traces or captures a step
_COMPILING = [False]


@contextlib.contextmanager
def compiling() -> Iterator[None]:
    """Mark the enclosed code as being traced or captured into a program."""
    previous = _COMPILING[0]
    _COMPILING[0] = True
    try:
        yield
    finally:
        _COMPILING[0] = previous


def is_compiling() -> bool:
    return _COMPILING[0]


def _is_pure_noise(func, args: tuple) -> bool:
    """A seeded op whose values depend only on shapes and Python numbers."""
    if torch.Tag.nondeterministic_seeded not in func.tags:
        return False
    name = func.overloadpacket.__name__
    # an in-place fill reads its target's shape only; a *_like factory its first argument's
    tensor_args = [a for a in args if isinstance(a, Tensor)]
    if name.endswith("_") or name.endswith("_like"):
        tensor_args = tensor_args[1:] if args and isinstance(args[0], Tensor) else tensor_args
    return not tensor_args


def _key(func, args: tuple, kwargs: dict, out: Tensor) -> tuple:
    scalars = tuple(a for a in args if not isinstance(a, Tensor))
    return (func, tuple(out.shape), out.dtype, out.device, scalars, tuple(sorted(kwargs.items())))


class _Record(TorchDispatchMode):
    def __init__(self, draws: list):
        super().__init__()
        self.draws = draws

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if isinstance(out, Tensor) and _is_pure_noise(func, args):
            self.draws.append((_key(func, args, kwargs, out), out.clone()))
        return out


class _Reuse(TorchDispatchMode):
    def __init__(self, draws: list):
        super().__init__()
        self.draws = list(reversed(draws))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.draws and _is_pure_noise(func, args):
            in_place = func.overloadpacket.__name__.endswith("_")
            # an in-place fill's target gives the key without drawing
            out = args[0] if in_place else func(*args, **kwargs)
            key, value = self.draws[-1]
            if key == _key(func, args, kwargs, out):
                self.draws.pop()
                return out.copy_(value) if in_place else value.clone()
            # the passes diverged: independent draws from here on (still unbiased)
            self.draws.clear()
            return func(*args, **kwargs) if in_place else out
        return func(*args, **kwargs)


class SharedNoise:
    """``with noise.first(): ...`` then ``with noise.again(): ...`` draw the same noise.

    :param like: a tensor on the device whose generator the passes use.
    """

    def __init__(self, like: Tensor):
        self.like = like
        self.compiled = is_compiling()
        self._draws: list = []
        self._state = None

    @contextlib.contextmanager
    def first(self) -> Iterator[None]:
        if self.compiled:
            with _Record(self._draws):
                yield
            return
        cuda = self.like.is_cuda
        self._state = (
            torch.get_rng_state(),
            torch.cuda.get_rng_state(self.like.device) if cuda else None,
        )
        yield

    @contextlib.contextmanager
    def again(self) -> Iterator[None]:
        if self.compiled:
            with _Reuse(self._draws):
                yield
            return
        cpu, cuda = self._state
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.like.device)
        yield
