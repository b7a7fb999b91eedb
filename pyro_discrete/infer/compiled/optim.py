r"""Optimizer updates written as tensor operations, for compiled SVI steps.

A compiled step (:class:`~pyro_discrete.infer.CompiledSVI`) must update parameters
without Python decisions or host reads per step: torch's eager ``Adam`` reads its step
counter with ``.item()``, Pyro's ``ClippedAdam`` keeps it as a Python int, and either would
be frozen in a traced program. :class:`TensorOptimizer` applies the same update rules with
every piece of state in tensors that the program updates in place:

- the state lives in the torch optimizer's own ``state[param]`` dict (``exp_avg``,
  ``exp_avg_sq``, ``step``, ``momentum_buffer``), so ``optim.get_state()`` /
  ``set_state()`` and Pyro checkpoints work at any step; step counters are moved to the
  parameter's device (as torch's ``capturable=True`` does);
- learning rates are read from the param groups before every step into one tensor that is
  an input of the program, so LR schedulers (``pyro.optim.ExponentialLR``, ...) and
  ``ClippedAdam``'s ``lrd`` decay keep working.

Supported rules: ``torch.optim.Adam`` / ``AdamW`` (``amsgrad``, ``maximize``,
``weight_decay``), ``torch.optim.SGD`` (momentum, Nesterov, ``weight_decay``, no
dampening), Pyro's ``ClippedAdam``, each behind :class:`pyro.optim.PyroOptim` (also with
``clip_args`` and LR schedulers) or :class:`~pyro_discrete.optim.MultiTensorAdam`. Any other
optimizer is stepped eagerly after the program (the program then returns the gradients).

The Adam update is torch's ``capturable`` formula (Kingma & Ba 2015):
:math:`m \leftarrow \beta_1 m + (1-\beta_1) g`, :math:`v \leftarrow \beta_2 v + (1-\beta_2)
g^2`, :math:`\theta \leftarrow \theta - \frac{\eta}{1-\beta_1^t}
\frac{m}{\sqrt{v / (1-\beta_2^t)} + \epsilon}`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import pyro
import torch
from pyro.optim import PyroOptim
from pyro.optim.clipped_adam import ClippedAdam
from pyro.optim.optim import _load_state_dict, is_scheduler
from torch import Tensor

from pyro_discrete.optim import MultiTensorAdam


@dataclass
class _Slot:
    """One parameter: its update rule, its torch param group and state dict."""

    param: Tensor
    rule: str
    group: dict
    state: dict
    lr_index: int
    clip: dict


def _rule(optimizer: torch.optim.Optimizer, group: dict) -> str | None:
    if isinstance(optimizer, ClippedAdam):
        return "clipped_adam"
    if isinstance(optimizer, torch.optim.AdamW):
        return "adamw"
    if isinstance(optimizer, torch.optim.Adam):
        return "adamw" if group.get("decoupled_weight_decay") else "adam"
    if isinstance(optimizer, torch.optim.SGD) and not group.get("dampening"):
        return "sgd"
    return None


def _scalar_dtype() -> torch.dtype:
    # torch's optimizers keep step counters in float64 only under a float64 default
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class TensorOptimizer:
    """The update of a Pyro optimizer as tensor operations on its own state.

    :param optim: a :class:`pyro.optim.PyroOptim` or
        :class:`~pyro_discrete.optim.MultiTensorAdam`.
    """

    def __init__(self, optim):
        if not isinstance(optim, PyroOptim):
            raise TypeError(
                f"CompiledSVI needs a pyro.optim optimizer (pyro.optim.Adam, ClippedAdam, "
                f"SGD, ...) or pyro_discrete.optim.MultiTensorAdam, got {type(optim).__name__}"
            )
        self.optim = optim
        self.slots: dict[int, _Slot] = {}
        self.groups: list[dict] = []
        self.lr: Tensor | None = None
        self._lr_values: list[float] = []
        self._group_rules: list[str] = []
        #: bumped whenever state tensors or the learning-rate tensor are created
        self.version = 0
        #: False once some parameter's optimizer has no tensor rule
        self.traceable = True
        #: parameters that have had a gradient: as in pyro.infer.SVI, whose zero_grads
        #: leaves a zero ``.grad`` behind, they are stepped (by their momentum) on later
        #: steps that give them no gradient
        #: (by id, with a weak reference: tensors compare by value, not identity)
        self.had_gradient: dict[int, weakref.ref] = {}
        #: Adam and AdamW as torch's fused kernel (off while a step is recorded for
        #: inductor, which has no fake kernel for it and fuses the elementwise rule itself)
        self.fuse = True

    # -- state -----------------------------------------------------------------------

    def _torch_optimizer(self, param: Tensor) -> tuple[torch.optim.Optimizer, dict]:
        optim = self.optim
        if isinstance(optim, MultiTensorAdam):
            if id(param) not in optim._known:
                optim._add(param)
            torch_optim = optim._optimizer
        else:  # PyroOptim.__call__'s first-sight logic, without its step
            if param not in optim.optim_objs:
                created = optim.optim_objs[param] = optim._get_optim(param)
                optim.grad_clip[param] = optim._get_grad_clip(param)
                name = pyro.get_param_store().param_name(param)
                state = optim._state_waiting_to_be_consumed.pop(name, None)
                if state is not None:
                    _load_state_dict(created, state)
            torch_optim = optim.optim_objs[param]
            if is_scheduler(torch_optim):
                torch_optim = torch_optim.optimizer
        group = next(g for g in torch_optim.param_groups if any(q is param for q in g["params"]))
        return torch_optim, group

    def slot(self, param: Tensor) -> _Slot:
        """The parameter's slot, creating the torch optimizer and its state if needed."""
        slot = self.slots.get(id(param))
        if slot is not None and slot.param is param:
            return slot
        torch_optim, group = self._torch_optimizer(param)
        rule = _rule(torch_optim, group)
        if rule is None:
            self.traceable = False
        clip = {}
        if not isinstance(self.optim, MultiTensorAdam):
            clip = dict(self.optim._get_grad_clip_args(param) or {})
        state = torch_optim.state[param]
        if rule is not None:
            self._init_state(rule, group, state, param)
        if not any(g is group for g in self.groups):
            self.groups.append(group)
            self._group_rules.append(rule or "")
            self.lr = None
            if rule == "clipped_adam" and group.get("lrd", 1.0) != 1.0:
                group["lr"] *= group["lrd"]  # a new group's first step decays too
        lr_index = next(i for i, g in enumerate(self.groups) if g is group)
        slot = _Slot(param, rule or "", group, state, lr_index, clip)
        self.slots[id(param)] = slot
        self.version += 1
        return slot

    @staticmethod
    def _init_state(rule: str, group: dict, state: dict, param: Tensor) -> None:
        # The same entries torch creates on a first step; counters live on the device.
        step = state.get("step", 0.0)
        if rule == "sgd":
            if group["momentum"] and state.get("momentum_buffer") is None:
                # with no dampening, momentum from zero equals torch's first-step copy
                state["momentum_buffer"] = torch.zeros_like(
                    param, memory_format=torch.preserve_format
                )
            return
        if not torch.is_tensor(step) or step.device != param.device:
            dtype = step.dtype if torch.is_tensor(step) else _scalar_dtype()
            state["step"] = torch.as_tensor(float(step), dtype=dtype).to(param.device)
        for key in ("exp_avg", "exp_avg_sq"):
            if key not in state:
                state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group.get("amsgrad") and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def hyper_parameters(self) -> tuple:
        """Every option of every param group but the learning rate (an input of the
        program): a program is replayed only while these are unchanged."""
        return tuple(
            tuple(
                (k, tuple(v) if isinstance(v, list) else v)
                for k, v in group.items()
                if k not in ("params", "lr")
            )
            for group in self.groups
        )

    def refresh(self) -> None:
        """Re-read each parameter's rule and create the state its options now need
        (after a param group's options changed)."""
        self.traceable = True
        for slot in self.slots.values():
            torch_optim, _ = self._torch_optimizer(slot.param)
            rule = _rule(torch_optim, slot.group)
            if rule is None:
                self.traceable = False
            else:
                self._init_state(rule, slot.group, slot.state, slot.param)
            slot.rule = rule or ""
            self._group_rules[slot.lr_index] = slot.rule
        self.version += 1

    def gradients_as_pyro_svi(self, params: list[Tensor], grads: list) -> list:
        """``grads`` with zeros for parameters that had a gradient before and have none
        now (``pyro.infer.SVI`` steps them), remembering those that get one."""
        out = []
        for param, grad in zip(params, grads, strict=True):
            ref = self.had_gradient.get(id(param))
            seen = ref is not None and ref() is param
            if grad is None:
                if seen:
                    grad = torch.zeros_like(param)
            elif not seen:
                self.had_gradient[id(param)] = weakref.ref(param)
                self.version += 1  # programs recorded before decided without it
            out.append(grad)
        return out

    def state_tensors(self) -> list[Tensor]:
        """Every tensor the updates read or write (program inputs), learning rates first."""
        out = [self._refresh_learning_rates()]
        for slot in self.slots.values():
            out += [v for v in slot.state.values() if torch.is_tensor(v)]
        return out

    # -- per step (Python, outside the program) --------------------------------------

    def begin_step(self) -> Tensor:
        """Host bookkeeping before each step; returns the learning-rate tensor.

        Pyro's ``ClippedAdam`` multiplies each group's learning rate by ``lrd`` at every
        step before using it: that Python-side decay happens here, once per step.
        """
        for group, rule in zip(self.groups, self._group_rules, strict=True):
            if rule == "clipped_adam" and group.get("lrd", 1.0) != 1.0:
                group["lr"] *= group["lrd"]
        return self._refresh_learning_rates()

    def _refresh_learning_rates(self) -> Tensor:
        # one tensor for all groups, updated in place so that a captured graph sees it
        values = [float(g["lr"]) for g in self.groups] or [0.0]
        if self.lr is None or len(values) != self.lr.numel():
            device = next(iter(self.slots.values())).param.device if self.slots else "cpu"
            self.lr = torch.tensor(values, dtype=torch.float64, device=device)
            self.version += 1
        elif values != self._lr_values:
            with torch.no_grad():
                self.lr.copy_(torch.tensor(values, dtype=torch.float64))
        self._lr_values = values
        return self.lr

    # -- the update (tensor operations, traced) -----------------------------------------

    def update(
        self, params: list[Tensor], grads: list[Tensor | None], finite: Tensor | None = None
    ) -> set[int]:
        """Apply one step to every parameter that has a gradient.

        Adam and AdamW run as torch's fused multi-tensor kernel (one operation per param
        group instead of about twenty per parameter). With ``finite`` (a 0-dim bool: the
        step's loss and gradients are finite), that kernel leaves parameters and state
        untouched where it is false (its ``found_inf``, as for ``GradScaler``) and the step
        counters advance by ``finite``: no copies are needed to undo a refused step.
        Returns the ids of the tensors so gated (the caller gates the others).
        """
        fused: dict[tuple, list[tuple[Tensor, Tensor, _Slot]]] = {}
        for param, grad in zip(params, grads, strict=True):
            if grad is None:
                continue  # as torch: a parameter the loss did not reach is not stepped
            slot = self.slot(param)
            lr = self._refresh_learning_rates()
            grad = _clip(grad, slot.clip)
            fusable = self.fuse and slot.rule in ("adam", "adamw")
            if fusable and _fusable(param, grad, slot.state):
                key = (slot.lr_index, slot.rule, param.device, param.dtype)
                fused.setdefault(key, []).append((param, grad, slot))
                continue
            rate = lr[slot.lr_index]
            if slot.rule in ("adam", "adamw"):
                _adam(param, grad, slot.state, slot.group, rate, slot.rule == "adamw")
            elif slot.rule == "clipped_adam":
                _clipped_adam(param, grad, slot.state, slot.group, rate)
            else:
                _sgd(param, grad, slot.state, slot.group, rate)
        gated: set[int] = set()
        lr = self._refresh_learning_rates()
        for (index, rule, _, _), items in fused.items():
            tensors = _fused_adam(items, lr[index], rule == "adamw", finite)
            if finite is not None:
                gated.update(map(id, tensors))
        return gated

    def eager_update(self, params: list[Tensor], grads: list[Tensor | None]) -> None:
        """Step the Pyro optimizer itself (for optimizers without a tensor rule)."""
        stepped = []
        for param, grad in zip(params, grads, strict=True):
            if grad is not None:
                param.grad = grad
                stepped.append(param)
        self.optim(stepped)
        for param in stepped:
            param.grad = None


def _clip(grad: Tensor, clip: dict) -> Tensor:
    """Pyro's ``clip_args`` for one parameter (``clip_grad_norm_``, ``clip_grad_value_``)."""
    if clip.get("clip_norm") is not None:
        norm = torch.linalg.vector_norm(grad, 2.0)
        grad = grad * (clip["clip_norm"] / (norm + 1e-6)).clamp(max=1.0)
    if clip.get("clip_value") is not None:
        grad = grad.clamp(-clip["clip_value"], clip["clip_value"])
    return grad


def _fusable(param: Tensor, grad: Tensor, state: dict) -> bool:
    # torch's fused kernels walk raw storage: every tensor dense, alike in layout and dtype
    tensors = [param, grad, state["exp_avg"], state["exp_avg_sq"]]
    tensors += [state["max_exp_avg_sq"]] if "max_exp_avg_sq" in state else []
    step = state["step"]
    return (
        param.dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
        and all(t.is_contiguous() and t.dtype == param.dtype for t in tensors)
        and all(t.device == param.device for t in [*tensors, step])
        # the CUDA kernels read float32 step counters (float64 under a float64 default)
        and (param.device.type == "cpu" or step.dtype == torch.float32)
    )


def _fused_adam(items: list, lr: Tensor, decoupled: bool, finite: Tensor | None) -> list[Tensor]:
    """One param group's Adam (AdamW) update by torch's fused kernel; returns the tensors
    it writes. Where ``finite`` is false the kernel returns without writing (``found_inf``)
    and the step counters stay (they advance by ``finite``)."""
    params = [param for param, _, _ in items]
    grads = [grad for _, grad, _ in items]
    states = [slot.state for _, _, slot in items]
    group = items[0][2].group
    beta1, beta2 = (float(b) for b in group["betas"])
    amsgrad = bool(group.get("amsgrad"))
    steps = [state["step"] for state in states]
    exp_avgs = [state["exp_avg"] for state in states]
    exp_avg_sqs = [state["exp_avg_sq"] for state in states]
    max_exp_avg_sqs = [state["max_exp_avg_sq"] for state in states] if amsgrad else []
    if finite is None:
        torch._foreach_add_(steps, 1)
        found_inf = None
    else:
        increment = finite.to(steps[0].dtype)
        torch._foreach_add_(steps, [increment] * len(steps))  # (a 0-dim tensor is read)
        found_inf = (~finite).to(torch.float32)
    if lr.device.type != "cpu":
        lr = lr.to(torch.float32)  # the CUDA kernels read a float32 learning rate
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
    kernel(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=float(group["weight_decay"]),
        eps=float(group["eps"]),
        amsgrad=amsgrad,
        maximize=bool(group.get("maximize")),
        grad_scale=None,
        found_inf=found_inf,
    )
    return [*params, *exp_avgs, *exp_avg_sqs, *max_exp_avg_sqs, *steps]


def _adam(param, grad, state, group, lr, decoupled: bool) -> None:
    beta1, beta2 = (float(b) for b in group["betas"])
    weight_decay = float(group["weight_decay"])
    if group.get("maximize"):
        grad = -grad
    step = state["step"]
    step.add_(1)
    if weight_decay:
        if decoupled:
            param.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(param, alpha=weight_decay)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - torch.pow(beta1, step)
    bias_correction2 = 1 - torch.pow(beta2, step)
    step_size_neg = -(lr / bias_correction1)
    if group.get("amsgrad"):
        torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
        exp_avg_sq = state["max_exp_avg_sq"]
    denom = (exp_avg_sq.sqrt() / (bias_correction2.sqrt() * step_size_neg)).add_(
        float(group["eps"]) / step_size_neg
    )
    param.addcdiv_(exp_avg, denom)


def _clipped_adam(param, grad, state, group, lr) -> None:
    # pyro.optim.clipped_adam.ClippedAdam.step, with the step counter a tensor
    clip_norm = float(group["clip_norm"])
    grad = grad.clamp(-clip_norm, clip_norm)
    beta1, beta2 = (float(b) for b in group["betas"])
    step = state["step"]
    step.add_(1)
    if group["weight_decay"]:
        grad = grad.add(param, alpha=float(group["weight_decay"]))
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = exp_avg_sq.sqrt().add_(float(group["eps"]))
    bias_correction1 = 1 - torch.pow(beta1, step)
    bias_correction2 = 1 - torch.pow(beta2, step)
    step_size = lr * bias_correction2.sqrt() / bias_correction1
    param.sub_(exp_avg / denom * step_size)


def _sgd(param, grad, state, group, lr) -> None:
    if group.get("maximize"):
        grad = -grad
    if group["weight_decay"]:
        grad = grad.add(param, alpha=float(group["weight_decay"]))
    momentum = float(group["momentum"])
    if momentum:
        buf = state["momentum_buffer"]
        buf.mul_(momentum).add_(grad)
        grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
    param.sub_(grad * lr)
