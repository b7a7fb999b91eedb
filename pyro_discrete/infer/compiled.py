r"""``CompiledSVI``: trace a whole SVI step once, replay it as a tensor program.

An eager step spends most of its time in Python (Pyro's effect handlers, the estimator's
bookkeeping) and in launching many small kernels. :class:`CompiledSVI` runs the first step
for a given input structure through the whole Python stack while recording the tensor
operations it performs (model, guide, estimator, control variates, backward, optimizer
update), and replays that recording on later steps:

- ``backend="trace"`` (CPU and GPU): an aten graph from
  :func:`torch.fx.experimental.proxy_tensor.make_fx`, replayed without Pyro's Python;
  ``"trace+inductor"`` also compiles it with ``torch.compile`` (fused kernels; the first
  compile takes minutes);
- ``backend="cuda_graph"`` (GPU): the whole step captured in one
  :class:`torch.cuda.CUDAGraph`, replayed with one launch.

The contract, as for :func:`jax.jit` and :mod:`torch.cuda.graphs`, is in ``docs/compiled.md``
and the class docstring.
"""

from __future__ import annotations

import contextlib
import traceback
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.util import torch_item
from pyro.poutine.messenger import Messenger
from torch import Tensor
from torch.overrides import TorchFunctionMode

from pyro_discrete.infer.compiled_optim import TensorOptimizer
from pyro_discrete.infer.cuda_graph import CaptureError, CudaGraphProgram, capture_step
from pyro_discrete.infer.shared_noise import compiling

BACKENDS = ("auto", "trace", "trace+inductor", "cuda_graph")
_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


class CompileError(RuntimeError):
    """A step that a tensor program cannot represent; the message names the line and fix."""


class StructureChangedError(CompileError):
    """The model's sample sites differ from those its program was traced with."""


# ---------------------------------------------------------------------------------------
# Input structure
# ---------------------------------------------------------------------------------------


def input_key(args: tuple, kwargs: dict) -> tuple[tuple, list[Tensor], list]:
    """``(key, tensors, objects)``: what a program is specialised to, the tensors to feed
    it, and the non-plain objects it holds (kept alive so that their ids stay unique).

    The key holds the container structure, each tensor's shape, dtype, device and
    ``requires_grad``, the value of each plain Python argument (numbers, strings, ...), and
    the identity of any other object (a module, a function).
    """
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


def _rebuild(obj, tensors: Iterator[Tensor]):
    """``obj`` with its tensors replaced, in :func:`input_key` order."""
    if isinstance(obj, Tensor):
        return next(tensors)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_rebuild(item, tensors) for item in obj)
    if isinstance(obj, dict):
        return {k: _rebuild(v, tensors) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------
# Structure records and errors
# ---------------------------------------------------------------------------------------


class _SiteRecorder(Messenger):
    """Records each sample site's distribution, shape and role (first occurrence)."""

    def __init__(self):
        super().__init__()
        self.sites: dict[str, tuple] = {}

    def _pyro_post_sample(self, msg):
        value = msg["value"]
        shape = tuple(value.shape) if isinstance(value, Tensor) else ()
        self.sites.setdefault(msg["name"], (type(msg["fn"]).__name__, shape, msg["is_observed"]))


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


_LIBRARY_DIRS = tuple(
    str(Path(m.__file__).parent) for m in (torch, pyro, contextlib, traceback)
) + (str(Path(__file__).parent),)


def user_frame(exc: BaseException) -> str:
    """``file:line: code`` of the innermost frame outside torch, Pyro and this layer."""
    frames = traceback.extract_tb(exc.__traceback__)
    outside = [f for f in frames if not f.filename.startswith(_LIBRARY_DIRS)]
    if not outside:
        return "an unknown line"
    f = outside[-1]
    return f"{f.filename}:{f.lineno}: `{(f.line or '').strip()}`"


def _is_host_read(exc: BaseException) -> bool:
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


@contextlib.contextmanager
def _traceable() -> Iterator[None]:
    # Validation checks read tensors on the host (support checks): they run in the eager
    # steps (first sight of a structure failing, check_every) and never in a program.
    with compiling(), pyro.validation_enabled(False), _OneHotWithoutHostRead():
        with torch.enable_grad():
            yield


# ---------------------------------------------------------------------------------------
# Traced programs
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _lean_tracer() -> Iterator[None]:
    """make_fx without per-node metadata that replay never reads.

    In real mode make_fx stores, for every node, a fake copy of its value (a new
    FakeTensorMode each time) and a Python stack trace: together about 80% of tracing
    time for a REBAR step. The program needs neither.
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


class TracedProgram:
    """An aten graph of one step and the tensors it was traced with."""

    def __init__(self, graph_module, state: list[Tensor], params: list[Tensor], sites, objects):
        self.graph_module = graph_module
        self.run_graph: Callable = graph_module
        self.state = state  # param store, optimizer state, learning rates: mutated in place
        self.params = params  # parameters whose gradients are outputs (eager optimizers)
        self.sites = sites
        self.objects = objects
        self.calls = 0
        self.store_ids: tuple = ()
        self.optim_version = -1

    def run(self, tensors: list[Tensor]) -> tuple[Tensor, list[Tensor | None]]:
        with torch.no_grad():
            loss, *grads = self.run_graph(*self.state, *tensors)
        return loss, grads


def _keep_side_effects(node) -> bool:
    # Random draws stay even when unused, so a replay consumes the generator as the traced
    # (eager) step did: a resumed run then reproduces an uninterrupted one.
    target = node.target
    if node.op == "call_function" and isinstance(target, torch._ops.OpOverload):
        if torch.Tag.nondeterministic_seeded in target.tags or target._schema.is_mutable:
            return True
    return node.is_impure()


class CompiledSVI:
    r"""A drop-in for :class:`pyro.infer.SVI` whose steps replay a traced tensor program.

    The first :meth:`step` for an input structure runs eagerly (it builds the parameters
    that estimators create lazily, and shows Pyro's own errors); the second runs through
    Pyro while recording its tensor operations (a real step: its result is returned);
    later steps with the same structure replay the recording, as :func:`jax.jit` and
    :class:`torch.cuda.CUDAGraph` do. A program is specialised to, and only replayed for:

    - each tensor argument's shape, dtype, device and ``requires_grad``; the value of each
      plain Python argument (numbers, strings, ``None``); the identity of any other object;
      containers (tuples, lists, dicts) are looked through;
    - the param store's tensors and the optimizer's state (``pyro.get_param_store().load``,
      ``clear_param_store`` or a new parameter trigger a new trace).

    A new structure (the last, smaller minibatch of an epoch) gets its own program; the
    ``max_programs`` most recently used are kept.

    **State.** Parameters, running statistics (NVIL's mean and variance, decaying
    baselines, the Gumbel annealing counter) and optimizer state are the param store's and
    the optimizer's own tensors, updated *in place* by the program: ``pyro.param``,
    ``pyro.get_param_store().save / load`` and ``optim.get_state()`` work at any step.
    Random draws are fresh on every replay. The update rules of Adam, AdamW, SGD,
    ClippedAdam and :class:`~pyro_discrete.optim.MultiTensorAdam` run inside the program
    (learning rates are read from the param groups before each step, so LR schedulers
    work); other optimizers are stepped eagerly after it.

    **What a program cannot represent.** Anything decided in Python from tensor values
    or from state that changes between steps is frozen at its first value:

    - host reads (``.item()``, ``float(t)``, ``bool(t)``, ``if t > 0``) raise
      :class:`CompileError` at trace time, naming the line;
    - reads that bypass torch's dispatcher (``.tolist()``, ``.numpy()``), Python counters,
      ``random.random()``: not detected when traced. Every ``check_every`` steps the step
      runs eagerly and its sample sites (names, distributions, shapes) are compared with the
      traced ones; a difference raises :class:`StructureChangedError` naming the site;
    - Pyro's validation checks are host reads: they run in eager steps only.

    With ``fallback="eager"`` a structure that cannot be traced runs eagerly (with one
    warning) instead of raising.

    **Loss.** :meth:`step` returns minus the ELBO estimate as a 0-dim tensor on the
    parameters' device, *without a host sync*; ``float(loss)`` syncs when you need the
    number (log every N steps). :meth:`evaluate_loss` is eager, as in ``SVI``.

    :param model: the Pyro model.
    :param guide: the guide.
    :param optim: a :class:`pyro.optim.PyroOptim` (``Adam``, ``ClippedAdam``, ``SGD``, an LR
        scheduler, ...) or :class:`~pyro_discrete.optim.MultiTensorAdam`.
    :param loss: an ELBO with ``differentiable_loss`` (:class:`DiscreteELBO`, Pyro's
        ``Trace_ELBO``, ...).
    :param str backend: ``"trace"``, ``"trace+inductor"``, ``"cuda_graph"`` (CUDA only),
        or ``"auto"``: ``"cuda_graph"`` when the parameters or data are on a CUDA device,
        else ``"trace"``.
    :param int check_every: run every N-th step of a program eagerly and compare the sample
        sites (0: never).
    :param int max_programs: programs kept (least recently used dropped).
    :param str fallback: ``"raise"`` (default) or ``"eager"``.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        optim,
        loss,
        backend: str = "auto",
        check_every: int = 1000,
        max_programs: int = 8,
        fallback: str = "raise",
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if fallback not in ("raise", "eager"):
            raise ValueError(f"fallback must be 'raise' or 'eager', got {fallback!r}")
        if backend == "cuda_graph" and not torch.cuda.is_available():
            raise CompileError(
                "CompiledSVI(backend='cuda_graph') needs a CUDA device, and "
                "torch.cuda.is_available() is False: use backend='trace' (or 'auto')"
            )
        if not hasattr(loss, "differentiable_loss"):
            raise TypeError(
                f"CompiledSVI needs a loss with differentiable_loss(model, guide, ...); "
                f"{type(loss).__name__} has none"
            )
        self.model = model
        self.guide = guide
        self.optim = optim
        self.loss = loss
        self.backend = backend
        self.check_every = int(check_every)
        self.max_programs = int(max_programs)
        self.fallback = fallback
        self.tensor_optim = TensorOptimizer(optim)
        self.programs: OrderedDict[tuple, TracedProgram | CudaGraphProgram] = OrderedDict()
        self._eager_keys: set[tuple] = set()
        #: input structures seen once, with the sample sites of their eager step
        self._seen: dict[tuple, dict] = {}
        self.num_traces = 0

    # -- the eager step (also what is traced) ------------------------------------------

    def _run_step(self, args: tuple, kwargs: dict) -> tuple[Tensor, list, list, dict]:
        """One step through Pyro: ``(loss, params, grads left to apply, sample sites)``.

        With a tensor update rule the optimizer step is part of this function (and of the
        program); otherwise the gradients come back for :meth:`TensorOptimizer.eager_update`.
        """
        recorder = _SiteRecorder()
        with poutine.trace(param_only=True) as capture, recorder:
            loss = self.loss.differentiable_loss(self.model, self.guide, *args, **kwargs)
        unique: dict[int, Tensor] = {}
        for site in capture.trace.nodes.values():
            p = site["value"].unconstrained()
            unique.setdefault(id(p), p)
        params = list(unique.values())
        for p in params:
            self.tensor_optim.slot(p)
        if torch.is_tensor(loss) and loss.requires_grad and params:
            grads = list(torch.autograd.grad(loss, params, allow_unused=True))
        else:
            grads = [None] * len(params)
        if self.tensor_optim.traceable:
            with torch.no_grad():
                self.tensor_optim.update(params, grads)
            grads = []
        loss = loss.detach() if torch.is_tensor(loss) else torch.as_tensor(loss)
        return loss, params, grads, recorder.sites

    def _eager_step(self, args: tuple, kwargs: dict) -> tuple[Tensor, dict]:
        with torch.enable_grad():
            loss, params, grads, sites = self._run_step(args, kwargs)
        if grads:
            self.tensor_optim.eager_update(params, grads)
        _warn_if_nan(loss)
        return loss, sites

    # -- the public interface ------------------------------------------------------------

    def step(self, *args, **kwargs) -> Tensor:
        """Take one gradient step; return minus the ELBO estimate (a 0-dim tensor)."""
        key, tensors, objects = input_key(args, kwargs)
        self.tensor_optim.begin_step()
        program = self.programs.get(key)
        if program is not None and not self._still_valid(program):
            self.programs.clear()  # the store or the optimizer changed: every program
            program = None
        if program is None:
            if key in self._eager_keys or key not in self._seen:
                # First sight runs eagerly: it creates lazily built parameters (control
                # variates) and shows Pyro's own errors; the second sight is traced.
                loss, sites = self._eager_step(args, kwargs)
                self._seen[key] = sites
                return loss
            return self._compile(key, tensors, objects, args, kwargs)
        self.programs.move_to_end(key)
        program.calls += 1
        if self.check_every and program.calls % self.check_every == 0:
            loss, sites = self._eager_step(args, kwargs)
            difference = structure_difference(program.sites, sites)
            if difference is not None:
                self._structure_changed(key, difference)
            return loss
        loss, grads = program.run(tensors)
        if grads:
            self.tensor_optim.eager_update(program.params, grads)
        return loss

    def evaluate_loss(self, *args, **kwargs) -> float:
        """Minus the ELBO estimate without a gradient step (eager, as ``SVI``'s)."""
        with torch.no_grad():
            return torch_item(self.loss.loss(self.model, self.guide, *args, **kwargs))

    # -- building programs --------------------------------------------------------------

    def _state_tensors(self) -> list[Tensor]:
        store = pyro.get_param_store()
        return list(store._params.values()) + self.tensor_optim.state_tensors()

    def _still_valid(self, program) -> bool:
        store = pyro.get_param_store()._params
        return program.store_ids == tuple(map(id, store.values())) and (
            program.optim_version == self.tensor_optim.version
        )

    def _resolve_backend(self, tensors: list[Tensor]) -> str:
        if self.backend != "auto":
            return self.backend
        on_cuda = any(t.is_cuda for t in tensors) or any(
            t.is_cuda for t in pyro.get_param_store()._params.values()
        )
        return "cuda_graph" if on_cuda and torch.cuda.is_available() else "trace"

    def _compile(self, key, tensors, objects, args, kwargs) -> Tensor:
        backend = self._resolve_backend(tensors)
        store = pyro.get_param_store()._params
        if backend == "cuda_graph" and not store:
            # capture does not execute: parameters must exist first
            return self._eager_step(args, kwargs)[0]
        store_ids = tuple(map(id, store.values()))
        version = self.tensor_optim.version
        state = self._state_tensors()
        snapshot = [t.detach().clone() for t in state]

        def unchanged() -> bool:
            same_store = tuple(map(id, store.values())) == store_ids
            return same_store and self.tensor_optim.version == version

        try:
            if backend == "cuda_graph":
                program, loss = capture_step(
                    self, state, tensors, args, kwargs, _traceable, unchanged
                )
            else:
                program, loss = self._trace(state, tensors, objects, args, kwargs, backend)
        except Exception as exc:
            with torch.no_grad():
                for t, saved in zip(state, snapshot, strict=True):
                    t.copy_(saved)
            error = host_read_error(exc, backend) if _is_host_read(exc) else exc
            if isinstance(exc, CaptureError):
                error = CompileError(f"CompiledSVI(backend='cuda_graph') cannot capture: {exc}")
            if self.fallback == "eager" and isinstance(error, CompileError):
                warnings.warn(
                    f"{error} Running this input structure eagerly.", RuntimeWarning, stacklevel=3
                )
                self._eager_keys.add(key)
                return self._eager_step(args, kwargs)[0]
            if error is exc:
                raise
            raise error from exc
        self.num_traces += 1
        if program is None or not unchanged():
            # The step created parameters or optimizer state (a first step, a new site):
            # it ran correctly, but its recording treats them as constants. Trace again.
            return loss
        # the eager step and the traced one must agree before anything is replayed
        difference = structure_difference(self._seen.get(key, program.sites), program.sites)
        if difference is not None:
            self._structure_changed(key, difference)
            return loss
        program.store_ids = store_ids
        program.optim_version = version
        self.programs[key] = program
        while len(self.programs) > self.max_programs:
            self.programs.popitem(last=False)
        return loss

    def _trace(self, state, tensors, objects, args, kwargs, backend):
        from torch.fx.experimental.proxy_tensor import make_fx

        out: dict = {}

        def step_program(*flat):
            # ``flat`` are the very tensors the step reads (make_fx tracks them by identity)
            loss, params, grads, sites = self._run_step(args, kwargs)
            out.update(loss=loss, params=params, sites=sites, grads=grads)
            return (loss, *grads)

        with _traceable(), _lean_tracer():
            graph_module = make_fx(step_program, tracing_mode="real")(*state, *tensors)
        graph_module.graph.eliminate_dead_code(_keep_side_effects)
        graph_module.recompile()
        params = out["params"] if out["grads"] else []
        program = TracedProgram(graph_module, state, params, out["sites"], objects)
        if backend == "trace+inductor":
            program.run_graph = torch.compile(graph_module, backend="inductor", dynamic=False)
        if out["grads"]:
            # the traced step computed gradients; the optimizer steps once, here
            self.tensor_optim.eager_update(params, out["grads"])
        return program, out["loss"]

    def _structure_changed(self, key: tuple, difference: str) -> None:
        """Drop the key's program; raise, or (``fallback="eager"``) warn and run eagerly."""
        self.programs.pop(key, None)
        message = (
            f"CompiledSVI: the model's sample sites differ from those its program was traced "
            f"with: {difference}. A program replays the sites it was traced with, so steps "
            f"since the last check (every {self.check_every} steps) may have used a stale "
            "structure. The structure depends on something a program freezes: values read "
            "with .tolist()/.numpy(), or Python state (a counter, random.random()). Make it "
            "depend on the inputs only (shapes, Python arguments), or train this model with "
            "pyro.infer.SVI."
        )
        if self.fallback != "eager":
            raise StructureChangedError(message)
        warnings.warn(message + " Running it eagerly from now on.", RuntimeWarning, stacklevel=4)
        self._eager_keys.add(key)


def _warn_if_nan(loss: Tensor) -> None:
    # eager steps only: a replay never syncs
    if bool(torch.isnan(loss)):
        warnings.warn(
            "CompiledSVI: the loss is NaN; check the model's log-densities and the learning rate",
            RuntimeWarning,
            stacklevel=4,
        )
