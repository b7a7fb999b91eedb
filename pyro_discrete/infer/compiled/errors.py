"""The errors of :class:`~pyro_discrete.infer.CompiledSVI`, and how they name the user's line."""

from __future__ import annotations

import contextlib
import traceback
from pathlib import Path

import pyro
import torch


class CompileError(RuntimeError):
    """A step that a tensor program cannot represent; the message names the line and fix."""


class StructureChangedError(CompileError):
    """The model's sample sites differ from those its program was traced with."""


class CaptureError(RuntimeError):
    """Something in the step that one CUDA graph would freeze; the message says the fix."""


_LIBRARY_DIRS = tuple(
    str(Path(m.__file__).parent) for m in (torch, pyro, contextlib, traceback)
) + (str(Path(__file__).parent.parent),)


def _outside(frames) -> str:
    outside = [f for f in frames if not f.filename.startswith(_LIBRARY_DIRS)]
    if not outside:
        return "an unknown line"
    f = outside[-1]
    return f"{f.filename}:{f.lineno}: `{(f.line or '').strip()}`"


def user_frame(exc: BaseException) -> str:
    """``file:line: code`` of the innermost frame outside torch, Pyro and this package."""
    return _outside(traceback.extract_tb(exc.__traceback__))


def user_line() -> str:
    """``file:line: code`` of the innermost calling frame outside the libraries."""
    return _outside(traceback.extract_stack())


def is_host_read(exc: BaseException) -> bool:
    # make_fx: "...get value out of a tracing tensor with aten._local_scalar_dense...";
    # CUDA-graph capture: "operation not permitted when stream is capturing"
    text = str(exc)
    markers = ("_local_scalar_dense", "data-dependent", "stream is capturing", "StreamCapture")
    return any(m in text for m in markers)


def host_read_error(exc: BaseException, backend: str) -> CompileError:
    return CompileError(
        f"CompiledSVI(backend={backend!r}) cannot trace this step: it reads a tensor's "
        f"value on the host (.item(), float(t), int(t), bool(t), `if t > 0:`) at "
        f"{user_frame(exc)}. A compiled program replays tensor operations only, so a "
        "Python decision made from a sampled value would be frozen at its first value. "
        "Fix: compute it with tensor operations (torch.where(cond, a, b) instead of `if`, "
        "keep scalars as tensors, pass Python numbers as arguments), or train this model "
        "with pyro.infer.SVI, or CompiledSVI(..., fallback='eager') to run it eagerly "
        "with a warning."
    )


def captured_constant_error(description: str, line: str, backend: str) -> CompileError:
    return CompileError(
        f"CompiledSVI(backend={backend!r}) cannot trace this step: it reads {description} "
        f"that is neither an argument of step(), a parameter (pyro.param, pyro.module) nor "
        f"a buffer of a module the step calls, first used at {line}. A program keeps that "
        "very tensor object, so a replay would not see a new tensor bound to the same name "
        "(a global rebound between steps, an attribute of an argument replaced) and would "
        "train on the first one. Fix: pass the tensor to svi.step(...) as an argument (the "
        "model and guide receive it), or make it a pyro.param or a module buffer; or train "
        "this model with pyro.infer.SVI, or CompiledSVI(..., fallback='eager')."
    )


def structure_difference(traced: dict, now: dict) -> str | None:
    """A sentence naming the first site that differs, or ``None``."""
    for name, (fn, shape, observed) in now.items():
        if name not in traced:
            return f"site '{name}' ({fn}, shape {shape}) appeared"
        fn0, shape0, observed0 = traced[name]
        if fn != fn0:
            return f"site '{name}' changed distribution from {fn0} to {fn}"
        if shape != shape0:
            return f"site '{name}' changed shape from {shape0} to {shape}"
        if observed != observed0:
            return f"site '{name}' changed from {'observed' if observed0 else 'latent'}"
    for name, (fn, shape, _) in traced.items():
        if name not in now:
            return f"site '{name}' ({fn}, shape {shape}) vanished"
    return None


def structure_changed_message(difference: str, check_every: int | None) -> str:
    every = f"every {check_every} steps" if check_every else "never: check_every=None"
    return (
        f"CompiledSVI: the model's sample sites differ from those its program was traced "
        f"with: {difference}. A program replays the sites it was traced with, so steps "
        f"since the last check ({every}) may have used a stale "
        "structure. The structure depends on something a program freezes: values read "
        "with .tolist()/.numpy(), or Python state (a counter, random.random()). Make it "
        "depend on the inputs only (shapes, Python arguments), or train this model with "
        "pyro.infer.SVI."
    )
