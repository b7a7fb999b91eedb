"""What a program is specialised to: the structure of the arguments of ``step``.

The key holds the container structure, each tensor's shape, dtype, device and
``requires_grad``, the value of each plain Python argument (numbers, strings, ...), and the
identity of any other object (a module, a function). Python numbers declared dynamic
(``CompiledSVI(..., dynamic_args=...)``) enter as 0-dim tensors instead, so that their value
is an input of the program rather than part of its key.
"""

from __future__ import annotations

import numbers
from collections.abc import Collection, Iterator

import torch
from torch import Tensor

_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


def describe(name: int | str) -> str:
    """``argument 1`` or ``keyword argument 'beta'``."""
    return f"argument {name}" if isinstance(name, int) else f"keyword argument {name!r}"


def validate_dynamic(dynamic_args) -> frozenset:
    """The positions (ints) and keyword names (strs) of ``dynamic_args``, checked."""
    if isinstance(dynamic_args, (int, str)):
        dynamic_args = (dynamic_args,)
    try:
        names = tuple(dynamic_args)
    except TypeError:
        names = None
    valid = names is not None and all(
        (isinstance(n, int) and not isinstance(n, bool) and n >= 0) or isinstance(n, str)
        for n in names
    )
    if not valid:
        raise ValueError(
            f"dynamic_args must be positions (ints >= 0) and keyword names (strs) of the "
            f"arguments of step(), got {dynamic_args!r}; e.g. dynamic_args=(1,) or "
            "dynamic_args=('annealing',)"
        )
    return frozenset(names)


def make_dynamic(
    args: tuple, kwargs: dict, dynamic: Collection, device: torch.device
) -> tuple[tuple, dict]:
    """``args`` and ``kwargs`` with the declared Python numbers as 0-dim tensors."""
    if not dynamic:
        return args, kwargs

    def convert(value):
        if isinstance(value, bool):
            return torch.tensor(value, device=device)
        if isinstance(value, numbers.Integral):
            return torch.tensor(int(value), dtype=torch.int64, device=device)
        if isinstance(value, numbers.Real):
            return torch.tensor(float(value), dtype=torch.get_default_dtype(), device=device)
        return value

    args = tuple(convert(a) if i in dynamic else a for i, a in enumerate(args))
    kwargs = {k: convert(v) if k in dynamic else v for k, v in kwargs.items()}
    return args, kwargs


def input_key(args: tuple, kwargs: dict) -> tuple[tuple, list[Tensor], list]:
    """``(key, tensors, objects)``: what a program is specialised to, the tensors to feed
    it, and the non-plain objects it holds (kept alive so that their ids stay unique)."""
    key: list = []
    tensors: list[Tensor] = []
    objects: list = []

    def visit(obj) -> None:
        if isinstance(obj, Tensor):
            tensors.append(obj)
            key.append((tuple(obj.shape), obj.dtype, obj.device, obj.requires_grad))
        elif isinstance(obj, (tuple, list)):
            key.append((type(obj), len(obj)))
            for item in obj:
                visit(item)
        elif isinstance(obj, dict):
            key.append((dict, tuple(obj)))
            for item in obj.values():
                visit(item)
        elif isinstance(obj, _PLAIN):
            key.append((type(obj), obj))
        else:
            key.append(("object", id(obj)))
            objects.append(obj)

    visit(args)
    visit(kwargs)
    return tuple(key), tensors, objects


def plain_numbers(args: tuple, kwargs: dict) -> dict:
    """The top-level Python numbers of the arguments: ``{position or name: value}``."""
    found: dict = {}
    for name, value in [*enumerate(args), *kwargs.items()]:
        if isinstance(value, numbers.Number) and not isinstance(value, bool):
            found[name] = value
    return found


def rebuild(obj, tensors: Iterator[Tensor]):
    """``obj`` with its tensors replaced, in :func:`input_key` order."""
    if isinstance(obj, Tensor):
        return next(tensors)
    if isinstance(obj, (tuple, list)):
        return type(obj)(rebuild(item, tensors) for item in obj)
    if isinstance(obj, dict):
        return {k: rebuild(v, tensors) for k, v in obj.items()}
    return obj


def count_tensors(obj) -> int:
    if isinstance(obj, Tensor):
        return 1
    if isinstance(obj, (tuple, list)):
        return sum(count_tensors(x) for x in obj)
    if isinstance(obj, dict):
        return sum(count_tensors(x) for x in obj.values())
    return 0
