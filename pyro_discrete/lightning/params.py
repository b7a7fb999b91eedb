r"""Pyro's param store seen as ordinary ``nn.Parameter`` s, created before training starts.

Data-parallel training (:class:`torch.nn.parallel.DistributedDataParallel`, which
Lightning's ``"ddp"`` strategies use) averages the gradients of the *parameters of the
wrapped module*, registered when the wrapper is built; a torch optimizer steps the
parameters it was given when it was built. Pyro keeps a model's parameters in its global
param store instead, and :class:`~pyro_discrete.infer.DiscreteELBO` creates
control-variate parameters there lazily, on the first step. This module closes the gap:

1. :func:`warm_up` runs the loss once on an example batch, so every parameter the step
   touches exists, and finds which of them receive a gradient (as
   :class:`pyro.infer.SVI` does: the ``param`` sites of the step's trace). It changes no
   value: no optimizer step runs, ``.grad`` is not written, running statistics the step
   updated are restored (or removed when the step created them, so that the first real
   step creates them with their initial values).
2. :class:`ParamStoreParameters` holds those unconstrained tensors as ``nn.Parameter`` s
   of a module, *the very tensors the store holds*: the DDP wrapper averages their
   gradients and the optimizer steps them, and Pyro reads the stepped values.
3. :func:`param_store_state` / :func:`load_param_store_state` move the whole store
   (parameters and running statistics) in and out of a checkpoint, in place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor, nn
from torch.distributions import constraints

from pyro_discrete import _param_store as _store
from pyro_discrete.infer import control_variates as cv

__all__ = [
    "ParamStoreParameters",
    "load_param_store_state",
    "param_store_state",
    "warm_up",
]


def _escape(name: str) -> str:
    # nn.Module attribute names may not contain "." (module parameters in the store are
    # named "net$$$0.weight"); percent-encoding keeps the mapping reversible
    return name.replace("%", "%25").replace(".", "%2E")


def _unescape(key: str) -> str:
    return key.replace("%2E", ".").replace("%25", "%")


def warm_up(loss, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> list[str]:
    """Run ``loss.differentiable_loss`` once so that every lazily created parameter
    exists; return the names of the parameters that receive a gradient, sorted.

    Values are left as they were: parameters are not stepped, their ``.grad`` is not
    touched (the gradient is taken with :func:`torch.autograd.grad`), running statistics
    that existed are restored in place and those the step created are removed again.

    :raises ValueError: when no parameter receives a gradient.
    """
    store = pyro.get_param_store()
    before = {name: value.detach().clone() for name, value in store.named_parameters()}
    with poutine.trace(param_only=True) as capture:
        value = loss.differentiable_loss(model, guide, *args, **kwargs)
    traced = {}
    for node in capture.trace.nodes.values():
        unconstrained = node["value"].unconstrained()
        traced[store.param_name(unconstrained)] = unconstrained
    names = sorted(traced)
    grads: Iterable[Tensor | None] = [None] * len(names)
    if names and value.requires_grad:
        grads = torch.autograd.grad(value, [traced[n] for n in names], allow_unused=True)
    trained = [n for n, g in zip(names, grads, strict=True) if g is not None]
    if not trained:
        raise ValueError(
            "the loss has no trained parameter: no pyro.param or pyro.module in the model or "
            "guide receives a gradient from one step on the example batch; register the "
            "networks with pyro.module(name, net) inside the model and guide"
        )
    current = dict(store.named_parameters())
    running = set(cv.running_statistics())
    with torch.no_grad():
        for name, tensor in current.items():
            if name in before:
                if not torch.equal(tensor, before[name]):
                    tensor.copy_(before[name])
            elif name in running:
                del store[name]  # the first step creates it again, at its initial value
    return trained


class ParamStoreParameters(nn.Module):
    """The trained tensors of Pyro's param store as this module's ``nn.Parameter`` s.

    Each is the store's own unconstrained tensor (made an ``nn.Parameter`` in place in the
    store where it was a plain tensor, as :class:`pyro.nn.PyroModule` does), so that a
    DDP wrapper or optimizer built over this module trains exactly what Pyro reads.
    Parameter names are the store's, with ``.`` percent-encoded; :attr:`names` lists the
    store names in order.

    >>> import pyro, torch
    >>> _ = pyro.param("loc", torch.zeros(2))
    >>> params = ParamStoreParameters()
    >>> params.adopt(["loc"])
    >>> params.parameter("loc") is pyro.param("loc").unconstrained()
    True
    """

    def __init__(self) -> None:
        super().__init__()
        self.store_params = nn.ParameterDict()
        self._constraints: dict[str, constraints.Constraint] = {}

    @property
    def names(self) -> list[str]:
        """Param-store names, in registration order."""
        return [_unescape(key) for key in self.store_params.keys()]

    def parameter(self, name: str) -> nn.Parameter:
        return self.store_params[_escape(name)]

    def adopt(self, names: Iterable[str]) -> None:
        """Register the store's parameters ``names`` (making them ``nn.Parameter`` s)."""
        store = pyro.get_param_store()
        state = store.get_state()
        for name in names:
            if name not in state["params"]:
                raise KeyError(f"parameter {name!r} is not in Pyro's param store")
            tensor = state["params"][name]
            constraint = state["constraints"][name]
            if not isinstance(tensor, nn.Parameter):
                tensor = nn.Parameter(tensor.detach(), requires_grad=True)  # shares storage
                del store[name]
                store.set_state({"params": {name: tensor}, "constraints": {name: constraint}})
            self.store_params[_escape(name)] = tensor
            self._constraints[name] = constraint

    def bind(self) -> None:
        """Put this module's parameters (back) into the param store, e.g. in a process
        that received the module by pickling (spawned workers) or after the store was
        cleared; the store's entry is replaced where it holds another tensor."""
        store = pyro.get_param_store()
        current = dict(store.named_parameters())
        for name in self.names:
            param = self.parameter(name)
            if current.get(name) is param:
                continue
            if name in current:
                del store[name]
            constraint = self._constraints[name]
            store.set_state({"params": {name: param}, "constraints": {name: constraint}})

    def param_groups(self, lr: float, control_variate_lr: float) -> list[dict]:
        """Two optimizer param groups: the model's and guide's parameters at ``lr`` and the
        control variates' (``pyro_discrete/...`` names) at ``control_variate_lr``; empty
        groups are left out."""
        groups = [
            {"name": "model_and_guide", "lr": lr, "params": []},
            {"name": "control_variates", "lr": control_variate_lr, "params": []},
        ]
        for name in self.names:
            groups[name.startswith(cv.PREFIX)]["params"].append(self.parameter(name))
        return [g for g in groups if g["params"]]


def param_store_state() -> dict:
    """The whole param store as plain tensors and strings (loadable with
    ``torch.load(weights_only=True)``): ``{"params": {name: unconstrained value},
    "constraints": {name: repr of the constraint}, "running_statistics": [names]}``, the
    format of every checkpoint of the package (:mod:`pyro_discrete._param_store`)."""
    return _store.param_store_state()


def load_param_store_state(
    state: dict, required: Iterable[str] = (), device: torch.device | None = None
) -> None:
    """Write :func:`param_store_state` output into the live param store, in place.

    Entries the store holds are overwritten in place (so optimizers, DDP wrappers and
    ``pyro.module`` networks keep their tensors); unconstrained entries it lacks (running
    statistics, which the first step creates) are added on ``device``.

    :param required: names that the checkpoint must contain (the trained parameters).
    :raises ValueError: naming the parameter, when shapes differ, a required parameter is
        missing, or a constrained parameter of the checkpoint does not exist here (the
        checkpoint was written for another model, guide or estimator).
    """
    _store.load_param_store_state(state, required, device, strict=True)
