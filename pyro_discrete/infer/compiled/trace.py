"""The ``trace`` backends: one step recorded as an aten graph with ``make_fx``, replayed.

Also what both backends share while a step is recorded: the context that keeps host reads
out of the step (:func:`traceable`), the record of its sample sites and of the modules it
calls, and the check that no tensor enters a program as a hidden constant.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pyro
import torch
from pyro.poutine.indep_messenger import IndepMessenger
from pyro.poutine.messenger import Messenger
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from pyro_discrete.infer.compiled.errors import CompileError, captured_constant_error, user_line
from pyro_discrete.infer.shared_noise import compiling


class SiteRecorder(Messenger):
    """Records each sample site's distribution, shape and role (first occurrence)."""

    def __init__(self):
        super().__init__()
        self.sites: dict[str, tuple] = {}

    def _pyro_post_sample(self, msg):
        value = msg["value"]
        shape = tuple(value.shape) if isinstance(value, Tensor) else ()
        self.sites.setdefault(msg["name"], (type(msg["fn"]).__name__, shape, msg["is_observed"]))


@contextlib.contextmanager
def recording_modules() -> Iterator[dict]:
    """The modules whose ``forward`` runs inside the block, by id (their training modes
    decide what a program does: dropout, batch norm)."""
    modules: dict[int, torch.nn.Module] = {}

    def hook(module, inputs):
        modules.setdefault(id(module), module)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield modules
    finally:
        handle.remove()


class _OneHotWithoutHostRead(TorchFunctionMode):
    """``F.one_hot(index, k)`` as a comparison while tracing.

    On the CPU ``one_hot`` checks the index range by reading its min and max to the host,
    which a trace cannot do; torch's ``OneHotCategorical.sample`` calls it. Sampled indices
    are in range by construction, so the comparison gives the same values.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.one_hot:
            index = args[0]
            classes = args[1] if len(args) > 1 else kwargs.get("num_classes", -1)
            if classes >= 0:
                return (index.unsqueeze(-1) == torch.arange(classes, device=index.device)).long()
        return func(*args, **kwargs)


_PYRO_ITER = IndepMessenger.__iter__


def _sequential_plate_iter(self) -> Iterator[int]:
    """``for i in pyro.plate(name, size)`` without reading the indices on the host.

    Pyro's ``IndepMessenger.__iter__`` yields ``index.item()`` for each index tensor. A
    full-size plate's indices are ``arange(size)``, so the same Python ints come from
    ``range(size)``; a subsampled plate's indices are random, and site names made from them
    would change every step: refused.
    """
    if self._vectorized is True or self.dim is not None:
        raise ValueError(
            f"cannot use plate {self.name} as both vectorized and non-vectorized"
            "independence context"
        )
    size = getattr(self, "size", None)
    subsample_size = getattr(self, "subsample_size", size)
    if size is None or size < 0 or subsample_size != size:
        raise CompileError(
            f"CompiledSVI cannot trace the sequential plate '{self.name}' (size {size}, "
            f"subsample_size {subsample_size}) iterated at {user_line()}: its indices are a "
            "random subsample drawn each step, and Pyro's `for i in plate` yields each as a "
            "Python int (index.item()), so the site names and lookups made from it "
            "(f'x_{i}', data[i]) are decided in Python by the draw. A program records one "
            "draw and would replay it every step, and a program per drawn subsample would "
            "be recorded anew at almost every step. Fix: a vectorised plate (`with "
            "pyro.plate(name, size, subsample_size) as idx:` and data[idx]), a full-size "
            "sequential plate, CompiledSVI(..., fallback='eager') to run this structure "
            "eagerly, or pyro.infer.SVI."
        )
    self._vectorized = False
    self.dim = None
    for i in range(size):
        self.next_context()
        with self:
            yield i


@contextlib.contextmanager
def _sequential_plates() -> Iterator[None]:
    IndepMessenger.__iter__ = _sequential_plate_iter
    try:
        yield
    finally:
        IndepMessenger.__iter__ = _PYRO_ITER


@contextlib.contextmanager
def traceable() -> Iterator[None]:
    """The context of a step being traced or captured.

    Validation checks read tensors on the host (support checks): they run in the eager
    steps (first sight of a structure, ``check_every``) and never in a program.
    """
    with compiling(), pyro.validation_enabled(False), _OneHotWithoutHostRead():
        with _sequential_plates(), torch.enable_grad():
            yield


@contextlib.contextmanager
def lean_tracer() -> Iterator[None]:
    """make_fx without per-node metadata that replay never reads.

    In real mode make_fx stores, for every node, a fake copy of its value (a new
    FakeTensorMode each time) and a Python stack trace: together about 80% of tracing
    time for a REBAR step. The program needs neither. ``extract_val`` is a torch internal:
    ``tests/infer/compiled/test_trace.py`` fails if its name or signature changes.
    """
    from torch.fx.experimental import proxy_tensor

    original = proxy_tensor.extract_val

    def extract_val(val, include_real: bool = False):
        if isinstance(val, Tensor) and not isinstance(val, torch._subclasses.FakeTensor):
            return None
        return original(val, include_real)

    stack_traces = torch.fx.config.do_not_emit_stack_traces
    proxy_tensor.extract_val = extract_val
    torch.fx.config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        proxy_tensor.extract_val = original
        torch.fx.config.do_not_emit_stack_traces = stack_traces


def _keep_side_effects(node) -> bool:
    # Random draws stay even when unused, so a replay consumes the generator as the traced
    # (eager) step did: a resumed run then reproduces an uninterrupted one.
    target = node.target
    if node.op == "call_function" and isinstance(target, torch._ops.OpOverload):
        if torch.Tag.nondeterministic_seeded in target.tags or target._schema.is_mutable:
            return True
    return node.is_impure()


def trace(step: Callable, inputs: list[Tensor]):
    """The aten graph of ``step(*inputs)`` (which runs for real), without dead code."""
    from torch.fx.experimental.proxy_tensor import make_fx

    with traceable(), lean_tracer():
        graph_module = make_fx(step, tracing_mode="real")(*inputs)
    graph_module.graph.eliminate_dead_code(_keep_side_effects)
    graph_module.recompile()
    return graph_module


def hidden_constants(graph_module, allowed: set[int]) -> list[Tensor]:
    """Tensors the graph holds as constants that are not allowed (by id) and are not
    literals (``torch.tensor(data)`` in the step, rebuilt on every call)."""
    found = []
    for node in graph_module.graph.nodes:
        if node.op != "get_attr":
            continue
        value = getattr(graph_module, node.target, None)
        if not isinstance(value, Tensor) or id(value) in allowed:
            continue
        literal = torch.ops.aten.lift_fresh_copy.default
        if node.users and all(user.target is literal for user in node.users):
            continue
        found.append(value)
    return found


class _FirstUse(TorchFunctionMode):
    """Raises at the first torch function that receives one of ``tensors``."""

    def __init__(self, tensors: list[Tensor], backend: str):
        super().__init__()
        self.ids = {id(t): t for t in tensors}
        self.backend = backend

    def __torch_function__(self, func, types, args=(), kwargs=None):
        for leaf in tree_leaves((args, kwargs or {})):
            if isinstance(leaf, Tensor) and id(leaf) in self.ids:
                raise captured_constant_error(_describe(leaf), user_line(), self.backend)
        return func(*args, **(kwargs or {}))


def _describe(t: Tensor) -> str:
    return f"a tensor of shape {tuple(t.shape)} ({t.dtype}, {t.device})"


def refuse_hidden_constants(constants: list[Tensor], run_step: Callable, backend: str):
    """Raise :class:`CompileError` naming the line that first uses one of ``constants``,
    found by running the step once more (the caller restores the state it changes)."""
    with traceable(), _FirstUse(constants, backend):
        run_step()
    # not met again (a use that bypasses torch functions): name the tensor at least
    raise captured_constant_error(_describe(constants[0]), "an unknown line", backend)


class TracedProgram:
    """An aten graph of one step and the tensors it was traced with.

    Its outputs are the loss, a flag saying whether the step was finite (a step that is not
    updated nothing), and the gradients left for an eager optimizer.
    """

    def __init__(self, graph_module, state: list[Tensor], params: list[Tensor], sites, modules):
        self.graph_module = graph_module
        self.run_graph: Callable = graph_module
        self.state = state  # param store, optimizer state, learning rates: mutated in place
        self.params = params  # parameters whose gradients are outputs (eager optimizers)
        self.sites = sites
        self.modules = modules
        self.modes = tuple(m.training for m in modules)
        self.calls = 0
        self.guard: tuple = ()
        #: (module, name, tensor): module buffers and tensor attributes the graph holds
        self.attributes: list[tuple] = []

    def run(self, tensors: list[Tensor]) -> tuple[Tensor, Tensor, list[Tensor | None]]:
        with torch.no_grad():
            loss, finite, *grads = self.run_graph(*self.state, *tensors)
        return loss, finite, grads


def _modules_near(function) -> list[torch.nn.Module]:
    """Modules the model or guide can reach directly: its ``self``, closure variables,
    globals it names and default arguments, and modules held one attribute deeper."""
    found: list = []
    objects: list = [getattr(function, "__self__", None)]
    code = getattr(function, "__code__", None)
    for cell in getattr(function, "__closure__", None) or ():
        try:
            objects.append(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    if code is not None:
        names = getattr(function, "__globals__", {})
        objects += [names[n] for n in code.co_names if n in names]
    objects += list(getattr(function, "__defaults__", None) or ())
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            found.append(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            found += [v for v in vars(obj).values() if isinstance(v, torch.nn.Module)]
    return found


def module_attributes(functions, modules) -> dict[int, tuple]:
    """``{id(tensor): (module, name)}`` for every buffer and plain tensor attribute of the
    modules near ``functions`` and of ``modules`` (with their submodules)."""
    out: dict[int, tuple] = {}
    roots = [m for f in functions for m in _modules_near(f)] + list(modules)
    for root in roots:
        for module in root.modules():
            for name, value in [*module._buffers.items(), *vars(module).items()]:
                if isinstance(value, Tensor) and not isinstance(value, torch.nn.Parameter):
                    out.setdefault(id(value), (module, name))
    return out
