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

import warnings
from collections.abc import Callable
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.util import torch_item
from torch import Tensor

from pyro_discrete.infer.compiled.cache import ProgramCache
from pyro_discrete.infer.compiled.cuda_graph import capture_step
from pyro_discrete.infer.compiled.errors import (
    CaptureError,
    CompileError,
    StructureChangedError,
    host_read_error,
    is_host_read,
    structure_changed_message,
    structure_difference,
)
from pyro_discrete.infer.compiled.inputs import (
    describe,
    input_key,
    make_dynamic,
    plain_numbers,
    validate_dynamic,
)
from pyro_discrete.infer.compiled.optim import TensorOptimizer
from pyro_discrete.infer.compiled.program import Program
from pyro_discrete.infer.compiled.trace import (
    SiteRecorder,
    TracedProgram,
    hidden_constants,
    module_attributes,
    recording_modules,
    refuse_hidden_constants,
    trace,
)
from pyro_discrete.infer.elbo import NonFiniteLossError
from pyro_discrete.infer.shared_noise import is_compiling

BACKENDS = ("auto", "trace", "trace+inductor", "cuda_graph")
#: devices whose finiteness flag is read at every step (no device to wait for)
HOST_CHECKED_DEVICES = ("cpu",)


class StepResult(NamedTuple):
    loss: Tensor
    finite: Tensor  # 0-dim bool: loss and gradients finite
    params: list
    grads: list  # left for an eager optimizer (empty with a tensor update rule)
    sites: dict
    modules: list
    #: ids of the state tensors the optimizer update itself left unchanged where the step
    #: was not finite (the fused Adam kernels); the others are gated by copies
    gated: frozenset = frozenset()


def finite_flag(loss: Tensor, grads: list[Tensor | None]) -> Tensor:
    """A 0-dim bool: the loss and every gradient are finite.

    One pass per tensor, without allocation: ``aminmax`` (NaN propagates to both, an
    infinity shows as the min or the max, and, unlike a sum, it cannot overflow on finite
    values). Measured on the CPU it is about 3x cheaper than a float64 sum and 20x cheaper
    than an infinity norm (see docs/compiled.md, "Where the time goes")."""
    values = [loss, *(g for g in grads if g is not None and g.numel())]
    extrema = torch.stack([e for v in values for e in torch.aminmax(v)])
    return torch.isfinite(extrema).all()


class StepLoss(Tensor):
    """The loss of a replayed step on a CUDA device: reading it (``float``, ``.item()``,
    formatting) first checks that the steps since the last check were finite."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    def _verify(self) -> None:
        svi = getattr(self, "_svi", None)
        if svi is not None:
            svi.check_finite()

    def item(self):
        self._verify()
        return super().item()

    def __float__(self):
        self._verify()
        return super().__float__()

    def __format__(self, spec):
        self._verify()
        return super().__format__(spec)

    def tolist(self):
        self._verify()
        return super().tolist()


def _positive_int(name: str, value, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        none = " or None (never)" if allow_none else ""
        raise ValueError(f"{name} must be a positive int{none}, got {value!r}")
    return value


class CompiledSVI:
    r"""A drop-in for :class:`pyro.infer.SVI` whose steps replay a traced tensor program.

    The first :meth:`step` for an input structure runs eagerly (it builds the parameters
    that estimators create lazily, and shows Pyro's own errors); the second runs through
    Pyro while recording its tensor operations (a real step: its result is returned);
    later steps with the same structure replay the recording, as :func:`jax.jit` and
    :class:`torch.cuda.CUDAGraph` do. A program is replayed only while these are as when
    it was recorded (else the step is recorded again):

    - each tensor argument's shape, dtype, device and ``requires_grad``; the value of each
      plain Python argument (numbers, strings, ``None``) except those declared in
      ``dynamic_args``; the identity of any other object; containers are looked through;
    - the param store's tensors (``pyro.get_param_store().load``, ``clear_param_store`` or
      a new parameter), the optimizer object (``svi.optim = ...``) and every option of its
      param groups but the learning rate (``betas``, ``eps``, ``weight_decay``, ...);
    - the training mode of every module whose ``forward`` the step runs (``net.eval()``).

    A new structure (the last, smaller minibatch of an epoch) gets its own program; the
    ``max_programs`` most recently used are kept.

    **State.** Parameters, running statistics (NVIL's mean and variance, decaying
    baselines, the Gumbel annealing counter) and optimizer state are the param store's and
    the optimizer's own tensors, updated *in place* by the program: ``pyro.param``,
    ``pyro.get_param_store().save / load`` and ``optim.get_state()`` work at any step.
    Random draws are fresh on every replay. The update rules of Adam, AdamW, SGD,
    ClippedAdam and :class:`~pyro_discrete.optim.MultiTensorAdam` run inside the program
    (learning rates are read from the param groups before each step, so LR schedulers
    work); other optimizers are stepped eagerly after it. As in ``pyro.infer.SVI``, a
    parameter that has had a gradient is stepped (by its momentum) on steps that give it
    none.

    **Non-finite steps.** A step whose loss or gradients are not finite (NaN or inf in the
    data, a diverging learning rate) changes nothing, as the eager step, and raises
    :class:`~pyro_discrete.infer.NonFiniteLossError`: at that step on the CPU; on a CUDA
    device, where reading a flag waits for the device, when the returned loss is read
    (``float(loss)``), at the next ``check_every`` step, or at :meth:`check_finite`.

    **Refused** with :class:`CompileError` at the step that records, naming the line:
    host reads (``.item()``, ``float(t)``, ``bool(t)``, ``if t > 0``); tensors that are
    neither arguments, parameters nor module buffers (a global, an attribute of an
    argument: a program would keep the first one); subsampled sequential plates. Reads
    that bypass torch's dispatcher (``.tolist()``, ``.numpy()``), Python counters and
    ``random.random()`` are not seen when recorded: every ``check_every`` steps the step
    runs eagerly and its sample sites are compared with the recorded ones; a difference
    raises :class:`StructureChangedError` naming the site. With ``fallback="eager"`` a
    structure that cannot be recorded runs eagerly (with one warning) instead.

    **Loss.** :meth:`step` returns minus the ELBO estimate as a 0-dim tensor on the
    parameters' device, *without a host sync* on CUDA; ``float(loss)`` syncs when you need
    the number (log every N steps). :meth:`evaluate_loss` is eager, as in ``SVI``.

    :param model: the Pyro model.
    :param guide: the guide.
    :param optim: a :class:`pyro.optim.PyroOptim` (``Adam``, ``ClippedAdam``, ``SGD``, an LR
        scheduler, ...) or :class:`~pyro_discrete.optim.MultiTensorAdam`.
    :param loss: an ELBO with ``differentiable_loss`` (:class:`DiscreteELBO`, Pyro's
        ``Trace_ELBO``, ...).
    :param str backend: ``"trace"``, ``"trace+inductor"``, ``"cuda_graph"`` (CUDA only),
        or ``"auto"``: ``"cuda_graph"`` when the parameters or data are on a CUDA device,
        else ``"trace"``.
    :param check_every: run every N-th step of a program eagerly, compare the sample sites
        and check that the steps were finite (a positive int; ``None``: never).
    :param int max_programs: programs kept (least recently used dropped), at least 1.
    :param str fallback: ``"raise"`` (default) or ``"eager"``.
    :param dynamic_args: positions (ints) and keyword names (strs) of arguments of
        :meth:`step` that are Python numbers changing between steps (an annealing
        factor): they enter the program as 0-dim tensors instead of being part of its key.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        optim,
        loss,
        backend: str = "auto",
        check_every: int | None = 1000,
        max_programs: int = 8,
        fallback: str = "raise",
        dynamic_args=(),
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if fallback not in ("raise", "eager"):
            raise ValueError(f"fallback must be 'raise' or 'eager', got {fallback!r}")
        self.check_every = _positive_int("check_every", check_every, allow_none=True)
        self.max_programs = _positive_int("max_programs", max_programs)
        self.dynamic_args = validate_dynamic(dynamic_args)
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
        self.loss = loss
        self.backend = backend
        self.fallback = fallback
        self.cache = ProgramCache(self.max_programs)
        self.optim = optim
        self.num_traces = 0
        #: on a CUDA device: the finite flags of replays not yet checked, and-ed together
        self._unchecked: Tensor | None = None

    # -- the optimizer ---------------------------------------------------------------------

    @property
    def optim(self):
        return self.tensor_optim.optim

    @optim.setter
    def optim(self, optim) -> None:
        # a new optimizer (with fresh state, as in pyro.infer.SVI): every program is stale
        had_gradient = getattr(getattr(self, "tensor_optim", None), "had_gradient", {})
        self.tensor_optim = TensorOptimizer(optim)
        self.tensor_optim.had_gradient.update(had_gradient)
        self.cache.clear()

    @property
    def programs(self):
        """The programs kept, by input structure (most recently used last)."""
        return self.cache.programs

    @property
    def num_input_structures(self) -> int:
        """Input structures remembered (bounded: see ``docs/compiled.md``)."""
        return len(self.cache.seen)

    # -- the eager step (also what is traced) ------------------------------------------

    def _run_step(self, args: tuple, kwargs: dict) -> StepResult:
        """One step through Pyro, the optimizer update included when it has a tensor rule
        (else the gradients come back for :meth:`TensorOptimizer.eager_update`)."""
        recorder = SiteRecorder()
        with recording_modules() as modules:
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
        grads = self.tensor_optim.gradients_as_pyro_svi(params, grads)
        loss = loss.detach() if torch.is_tensor(loss) else torch.as_tensor(loss)
        finite = finite_flag(loss, grads)
        if not is_compiling() and not bool(finite):
            raise NonFiniteLossError(self._non_finite_message(args, kwargs, "this step"))
        gated: set[int] = set()
        if self.tensor_optim.traceable:
            with torch.no_grad():
                gated = self.tensor_optim.update(params, grads, finite)
            grads = []
        modules = list(modules.values())
        return StepResult(loss, finite, params, grads, recorder.sites, modules, frozenset(gated))

    def _gated_step(self, state: list[Tensor], args: tuple, kwargs: dict) -> StepResult:
        """:meth:`_run_step` as recorded: where the step is not finite, every state tensor
        it changed keeps its old value (a program cannot branch on the flag). The fused
        Adam update gates its own tensors; the rest (running statistics, other update
        rules) are copied before the step and restored by ``where`` on the flag."""
        versions = [t._version for t in state]
        with torch.no_grad():
            saved = [t.clone() for t in state]  # unused copies are dropped from the program
        result = self._run_step(args, kwargs)
        with torch.no_grad():
            for t, old, version in zip(state, saved, versions, strict=True):
                if t._version != version and id(t) not in result.gated:
                    torch.where(result.finite, t, old, out=t)
        return result

    def _eager_step(self, args: tuple, kwargs: dict) -> tuple[Tensor, dict]:
        state = self._state_tensors()
        saved = [t.detach().clone() for t in state]
        try:
            with torch.enable_grad():
                result = self._run_step(args, kwargs)
        except NonFiniteLossError:
            self._restore(state, saved)  # running statistics written before the check
            raise
        if result.grads:
            self.tensor_optim.eager_update(result.params, result.grads)
        return result.loss, result.sites

    # -- the public interface ------------------------------------------------------------

    def step(self, *args, **kwargs) -> Tensor:
        """Take one gradient step; return minus the ELBO estimate (a 0-dim tensor)."""
        if self.dynamic_args:
            args, kwargs = make_dynamic(args, kwargs, self.dynamic_args, self._device())
        key, tensors, objects = input_key(args, kwargs)
        self.tensor_optim.begin_step()
        program = self.cache.get(key)
        if program is not None and program.guard != self._guard():
            # the store, the optimizer or its options changed: every program is stale
            self.tensor_optim.refresh()
            self.cache.clear()
            program = None
        if program is not None and not self._same_modules(program):
            self.cache.drop(key)  # a module switched train/eval or a buffer was replaced
            program = None
        if program is None:
            if key in self.cache.eager or key not in self.cache.seen:
                # First sight runs eagerly: it creates lazily built parameters (control
                # variates) and shows Pyro's own errors; the second sight is traced.
                loss, sites = self._eager_step(args, kwargs)
                warning = self.cache.see(key, sites, plain_numbers(args, kwargs))
                if warning:
                    warnings.warn(warning, RuntimeWarning, stacklevel=2)
                return loss
            self.cache.seen.move_to_end(key)
            return self._compile(key, tensors, args, kwargs)
        program.calls += 1
        if self.check_every and program.calls % self.check_every == 0:
            self.check_finite()
            loss, sites = self._eager_step(args, kwargs)
            difference = structure_difference(program.sites, sites)
            if difference is not None:
                self._structure_changed(key, difference)
            return loss
        loss, finite, grads = program.run(tensors)
        return self._finish(loss, finite, program.params, grads, args, kwargs)

    def evaluate_loss(self, *args, **kwargs) -> float:
        """Minus the ELBO estimate without a gradient step (eager, as ``SVI``'s)."""
        self.check_finite()
        with torch.no_grad():
            return torch_item(self.loss.loss(self.model, self.guide, *args, **kwargs))

    def check_finite(self) -> None:
        """Raise :class:`~pyro_discrete.infer.NonFiniteLossError` if a replayed step since
        the last check was not finite (those steps changed nothing). A host sync."""
        unchecked, self._unchecked = self._unchecked, None
        if unchecked is not None and not bool(unchecked):
            message = self._non_finite_message((), {}, "a step since the last check")
            raise NonFiniteLossError(message)

    # -- after a program ran -----------------------------------------------------------------

    def _finish(self, loss, finite, params, grads, args, kwargs) -> Tensor:
        if grads or finite.device.type in HOST_CHECKED_DEVICES:
            # a CPU flag is read at no cost; an eager optimizer must know before stepping
            if not bool(finite):
                raise NonFiniteLossError(self._non_finite_message(args, kwargs, "this step"))
            if grads:
                self.tensor_optim.eager_update(params, grads)
            return loss
        self._unchecked = finite if self._unchecked is None else self._unchecked & finite
        loss = loss.as_subclass(StepLoss)
        loss._svi = self
        return loss

    @staticmethod
    def _non_finite_message(args: tuple, kwargs: dict, when: str) -> str:
        culprits = [
            f"{describe(name)} (shape {tuple(value.shape)}) holds NaN or inf"
            for name, value in [*enumerate(args), *kwargs.items()]
            if torch.is_tensor(value)
            and value.is_floating_point()
            and not bool(torch.isfinite(value).all())
        ]
        where = "; ".join(culprits) or (
            "the loss or a gradient is not finite (a learning rate that diverges, log(0) or "
            "logits that overflow in the model)"
        )
        return (
            f"CompiledSVI: {when} was not finite and was refused: nothing was updated "
            f"(parameters, optimizer state, running statistics): {where}. Check the data "
            "(torch.isfinite(x).all()), the model's log-densities and the learning rate."
        )

    # -- building programs --------------------------------------------------------------

    def _device(self) -> torch.device:
        for value in pyro.get_param_store()._params.values():
            return value.device
        return torch.device("cpu")

    def _state_tensors(self) -> list[Tensor]:
        store = pyro.get_param_store()
        return list(store._params.values()) + self.tensor_optim.state_tensors()

    @staticmethod
    def _restore(state: list[Tensor], saved: list[Tensor]) -> None:
        with torch.no_grad():
            for t, value in zip(state, saved, strict=True):
                t.copy_(value)

    @staticmethod
    def _same_modules(program) -> bool:
        if program.modes != tuple(m.training for m in program.modules):
            return False
        attributes = getattr(program, "attributes", ())
        return all(getattr(m, name, None) is t for m, name, t in attributes)

    def _guard(self) -> tuple:
        store = pyro.get_param_store()._params
        optim = self.tensor_optim
        return (tuple(map(id, store.values())), id(optim), optim.version, optim.hyper_parameters())

    def _resolve_backend(self, tensors: list[Tensor]) -> str:
        if self.backend != "auto":
            return self.backend
        on_cuda = any(t.is_cuda for t in tensors) or any(
            t.is_cuda for t in pyro.get_param_store()._params.values()
        )
        return "cuda_graph" if on_cuda and torch.cuda.is_available() else "trace"

    def _compile(self, key, tensors, args, kwargs) -> Tensor:
        backend = self._resolve_backend(tensors)
        store = pyro.get_param_store()._params
        if backend == "cuda_graph" and not store:
            # capture does not execute: parameters must exist first
            return self._eager_step(args, kwargs)[0]
        guard = self._guard()
        state = self._state_tensors()
        snapshot = [t.detach().clone() for t in state]

        def unchanged() -> bool:
            return self._guard()[:3] == guard[:3]

        try:
            if backend == "cuda_graph":
                program, loss, finite = capture_step(self, state, tensors, args, kwargs, unchanged)
            else:
                program, loss, finite = self._trace(state, tensors, args, kwargs, backend)
        except Exception as exc:
            self._restore(state, snapshot)
            error = host_read_error(exc, backend) if is_host_read(exc) else exc
            if isinstance(exc, CaptureError):
                error = CompileError(f"CompiledSVI(backend='cuda_graph') cannot capture: {exc}")
            if self.fallback == "eager" and isinstance(error, CompileError):
                warnings.warn(
                    f"{error} Running this input structure eagerly.", RuntimeWarning, stacklevel=3
                )
                self.cache.eager.add(key)
                return self._eager_step(args, kwargs)[0]
            if error is exc:
                raise
            raise error from exc
        self.num_traces += 1
        if program is not None and unchanged():
            # the eager step and the traced one must agree before anything is replayed
            eager_sites = self.cache.seen.get(key, program.sites)
            difference = structure_difference(eager_sites, program.sites)
            if difference is not None:
                self._structure_changed(key, difference)
            else:
                program.guard = guard
                self.cache.put(key, program)
        # else the step created parameters or optimizer state (a first step, a new site):
        # it ran correctly, but its recording treats them as constants. Trace again.
        return self._finish(loss, finite, [], [], args, kwargs)

    def _trace(self, state, tensors, args, kwargs, backend):
        out: dict = {}

        def step_program(*flat):
            # ``flat`` are the very tensors the step reads (make_fx tracks them by identity)
            result = self._gated_step(state, args, kwargs)
            out["result"] = result
            return (result.loss, result.finite, *result.grads)

        fuse, self.tensor_optim.fuse = self.tensor_optim.fuse, backend != "trace+inductor"
        try:
            graph_module = trace(step_program, [*state, *tensors])
        finally:
            self.tensor_optim.fuse = fuse
        result: StepResult = out["result"]
        allowed = {id(t) for t in state}
        for module in result.modules:
            allowed.update(id(t) for t in module.parameters())
        constants = hidden_constants(graph_module, allowed)
        # buffers and tensor attributes of the model's modules are guarded: a replay
        # checks that each is still the same tensor, else the step is recorded again
        owned = module_attributes((self.model, self.guide), result.modules)
        guarded = [(*owned[id(t)], t) for t in constants if id(t) in owned]
        constants = [t for t in constants if id(t) not in owned]
        if constants:
            refuse_hidden_constants(constants, lambda: self._run_step(args, kwargs), backend)
        params = result.params if result.grads else []
        program = TracedProgram(graph_module, state, params, result.sites, result.modules)
        program.attributes = guarded
        if backend == "trace+inductor":
            program.run_graph = torch.compile(graph_module, backend="inductor", dynamic=False)
        if result.grads and bool(result.finite):
            # the traced step computed gradients; the optimizer steps once, here
            self.tensor_optim.eager_update(params, result.grads)
        return program, result.loss, result.finite

    def _structure_changed(self, key: tuple, difference: str) -> None:
        """Drop the key's program; raise, or (``fallback="eager"``) warn and run eagerly."""
        self.cache.drop(key)
        message = structure_changed_message(difference, self.check_every)
        if self.fallback != "eager":
            raise StructureChangedError(message)
        warnings.warn(message + " Running it eagerly from now on.", RuntimeWarning, stacklevel=4)
        self.cache.eager.add(key)


__all__ = ["BACKENDS", "CompiledSVI", "Program", "StepLoss"]
