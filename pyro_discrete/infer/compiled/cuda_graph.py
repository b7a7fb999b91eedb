"""The ``cuda_graph`` backend of :class:`~pyro_discrete.infer.CompiledSVI`.

The whole step (model, guide, estimator, backward, optimizer update) is captured in one
:class:`torch.cuda.CUDAGraph` and replayed with one launch. Capture records kernels, not
Python, so everything the step computes on the host or on the CPU is frozen at capture:

- random draws must be on the GPU (captured with philox offsets that advance on every
  replay: fresh numbers); a CPU draw (e.g. a subsampling plate without
  ``device="cuda"``) or an in-place update of a CPU tensor raises at capture;
- host reads (``.item()``) and CPU-to-GPU copies are forbidden by CUDA during capture.
  ``torch.tensor(data, device="cuda")``, the usual way to write a parameter's initial
  value (``pyro.param("theta", torch.tensor([...], device="cuda"))``), is served from a
  copy staged by the warm-up step, after checking the value is the same.

Inputs are copied into static tensors before each replay; the loss is cloned out of its
static buffer, so values returned by earlier steps stay valid.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from pyro_discrete.infer.compiled.errors import CaptureError
from pyro_discrete.infer.compiled.inputs import count_tensors, rebuild
from pyro_discrete.infer.compiled.trace import traceable

_FACTORIES = (torch.tensor, torch.as_tensor, torch.asarray)


def _target_is_cuda(kwargs: dict) -> bool:
    device = kwargs.get("device")
    if device is None:
        return torch.get_default_device().type == "cuda"
    return torch.device(device).type == "cuda"


class StagedConstants(TorchFunctionMode):
    """``torch.tensor(data, device="cuda")`` without a host-to-device copy in capture.

    The warm-up step (not captured) records each such constant; the capture serves the
    recorded device tensor at the same position, after checking that the CPU value is
    the same (a changing value cannot live in a graph).
    """

    def __init__(self, staged: list, capturing: bool):
        super().__init__()
        self.staged = staged
        self.capturing = capturing
        self.position = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _FACTORIES or not _target_is_cuda(kwargs):
            return func(*args, **kwargs)
        if args and isinstance(args[0], Tensor) and args[0].is_cuda:
            return func(*args, **kwargs)
        host = func(*args, **{**kwargs, "device": "cpu"})
        if not self.capturing:
            device_value = func(*args, **kwargs)
            self.staged.append((host, device_value.clone()))
            return device_value
        if self.position >= len(self.staged):
            raise CaptureError("a torch.tensor(..., device='cuda') constant appeared in capture")
        staged_host, staged_device = self.staged[self.position]
        self.position += 1
        if staged_host.shape != host.shape or not torch.equal(staged_host, host):
            raise CaptureError(
                "a torch.tensor(..., device='cuda') constant changed between the warm-up "
                "step and capture; a CUDA graph would freeze it: compute it on the device"
            )
        return staged_device.clone()


class CpuStateGuard(TorchDispatchMode):
    """Refuses CPU random draws and in-place updates of CPU state during capture."""

    def __init__(self, state: list[Tensor]):
        super().__init__()
        self.cpu_state = {t.untyped_storage().data_ptr() for t in state if not t.is_cuda}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        first = args[0] if args and isinstance(args[0], Tensor) else out
        if not isinstance(first, Tensor) or first.device.type != "cpu":
            return out
        if torch.Tag.nondeterministic_seeded in func.tags:
            raise CaptureError(
                f"the step draws random numbers on the CPU ({func}): a CUDA graph would "
                "replay the same numbers; draw on the GPU (e.g. pyro.plate(..., "
                "device='cuda') for subsampling)"
            )
        mutable = func._schema.is_mutable
        if mutable and first.untyped_storage().data_ptr() in self.cpu_state:
            raise CaptureError(
                f"the step updates CPU state in place ({func}): a CUDA graph would not "
                "replay it; keep parameters and statistics on the GPU"
            )
        return out


class CudaGraphProgram:
    """A captured step: static inputs, the graph, static outputs."""

    def __init__(self, graph, static_inputs, result):
        self.graph = graph
        self.static_inputs = static_inputs
        self.static_loss = result.loss
        self.static_finite = result.finite
        self.params = result.params if result.grads else []
        self.static_grads = result.grads
        self.sites = result.sites
        self.modules = result.modules
        self.modes = tuple(m.training for m in result.modules)
        self.calls = 0
        self.guard: tuple = ()

    def run(self, tensors: list[Tensor]) -> tuple[Tensor, Tensor, list[Tensor | None]]:
        with torch.no_grad():
            for static, tensor in zip(self.static_inputs, tensors, strict=True):
                static.copy_(tensor, non_blocking=True)
        self.graph.replay()
        grads = [g.clone() for g in self.static_grads]
        return self.static_loss.clone(), self.static_finite.clone(), grads


def capture_step(
    svi, state: list[Tensor], tensors: list[Tensor], args, kwargs, unchanged
) -> tuple[CudaGraphProgram | None, Tensor, Tensor]:
    """Warm up, capture and replay once: ``(program, loss of this step)``.

    The warm-up step runs on a side stream (as torch's capture recipe requires) and its
    effects on parameters and optimizer state are undone, so that the call performs
    exactly one step: the first replay. If the warm-up created parameters or optimizer
    state (``unchanged()`` is false), it was this call's step: ``(None, its loss, finite)``.
    """
    device = next((t.device for t in state if t.is_cuda), None)
    if device is None:
        raise CaptureError("backend 'cuda_graph' needs the parameters on a CUDA device")
    for t in tensors:
        if not t.is_cuda:
            raise CaptureError(
                f"a tensor argument of shape {tuple(t.shape)} is on {t.device}; "
                "backend 'cuda_graph' needs the data on the GPU (x.to('cuda'))"
            )
    static_inputs = [t.detach().clone() for t in tensors]
    static_args = rebuild(args, iter(static_inputs))
    static_kwargs = rebuild(kwargs, iter(static_inputs[count_tensors(args) :]))
    saved = [t.detach().clone() for t in state]
    staged: list = []
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), traceable(), StagedConstants(staged, capturing=False):
        warm = svi._gated_step(state, static_args, static_kwargs)
    torch.cuda.current_stream(device).wait_stream(side)
    if not unchanged():
        if warm.grads and bool(warm.finite):
            svi.tensor_optim.eager_update(warm.params, warm.grads)
        return None, warm.loss, warm.finite
    with torch.no_grad():
        for t, value in zip(state, saved, strict=True):
            t.copy_(value)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with traceable(), StagedConstants(staged, capturing=True), CpuStateGuard(state):
        with torch.cuda.graph(graph):
            result = svi._gated_step(state, static_args, static_kwargs)
    program = CudaGraphProgram(graph, static_inputs, result)
    loss, finite, grads = program.run(tensors)
    if grads and bool(finite):
        svi.tensor_optim.eager_update(program.params, grads)
    return program, loss, finite


__all__ = ["CaptureError", "CpuStateGuard", "CudaGraphProgram", "StagedConstants", "capture_step"]
