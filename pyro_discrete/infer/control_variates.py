"""Where control-variate state lives: Pyro's param store, under ``pyro_discrete/...`` names.

Two kinds of state:

- *trained* parameters (REBAR's :math:`\\eta` and :math:`\\log\\lambda`, RELAX and NVIL
  networks) go through :func:`pyro.param` / :func:`pyro.module`, so :class:`pyro.infer.SVI`
  steps them with its optimizer (give them their own learning rate with a callable
  ``optim_args``, see :func:`control_variate_lr`);
- *running statistics* (decaying averages, NVIL's mean and variance) are written to the
  store directly, so the optimizer never touches them.

Both are saved and restored by ``pyro.get_param_store().save / load``. None of them has a
minibatch-sized shape, so the batch size may change between steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import torch
from torch import Tensor, nn

PREFIX = "pyro_discrete/"


def state_name(estimator: str, site: str, what: str) -> str:
    """The param-store name of one piece of control-variate state."""
    return f"{PREFIX}{estimator}/{site}/{what}"


def control_variate_state() -> dict[str, Tensor]:
    """Every piece of control-variate state in the param store, detached (for plots).

    >>> control_variate_state()  # e.g. {"pyro_discrete/rebar/z/eta": tensor(1.03), ...}
    {}
    """
    store = pyro.get_param_store()
    return {k: store[k].detach().clone() for k in store.keys() if k.startswith(PREFIX)}


#: param-store names of every running statistic read so far in this process
_RUNNING: set[str] = set()


def running_statistic(name: str, like: Tensor, init: float = 0.0) -> Tensor:
    """Read a running statistic (a scalar), creating it on first use.

    The returned tensor is the store's own (detached): :func:`set_running_statistic`
    updates it in place, so a traced or captured step that reads it once keeps seeing the
    current value on replay.
    """
    store = pyro.get_param_store()
    if name not in store:
        store[name] = torch.tensor(init, dtype=like.dtype, device=like.device)
    _RUNNING.add(name)
    return store[name].detach()


def set_running_statistic(name: str, value: Tensor) -> None:
    """Write a running statistic in place (a new tensor only if its shape or device changed)."""
    store = pyro.get_param_store()
    value = value.detach()
    if name in store:
        current = store[name]
        if current.shape == value.shape and current.device == value.device:
            with torch.no_grad():
                current.copy_(value)
            _RUNNING.add(name)
            return
    store[name] = value
    _RUNNING.add(name)


def running_statistics() -> dict[str, Tensor]:
    """The store's own tensors of every running statistic in use (decaying averages, NVIL's
    mean and variance, annealing step counters): the per-step state that is not trained by
    the optimizer, for synchronising across processes or replaying a compiled step."""
    store = pyro.get_param_store()
    return {name: store[name].detach() for name in sorted(_RUNNING) if name in store}


def trained_scalar(name: str, like: Tensor, init: float) -> Tensor:
    """A scalar control-variate parameter trained by the SVI optimizer."""
    return pyro.param(name, lambda: torch.tensor(init, dtype=like.dtype, device=like.device))


def mlp(in_features: int, hidden: Sequence[int], activation: type[nn.Module]) -> nn.Sequential:
    """A small MLP with a scalar output (baselines and RELAX surrogates)."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), activation()]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def registered_module(
    name: str, build: Callable[[], nn.Module], like: Tensor, cache: dict[str, nn.Module]
) -> nn.Module:
    """Build a control-variate network once per name and register it with Pyro.

    ``cache`` belongs to the estimator object. A network is rebuilt when the param store
    no longer holds it (after ``pyro.clear_param_store()``: a fresh start), when its input
    width no longer fits, or when the device changes. ``update_module_params=True`` loads
    values already in the store, so a network rebuilt after
    ``pyro.get_param_store().load(...)`` resumes where it was.
    """
    module = cache.get(name)
    if module is not None:
        first_name, first = next(iter(module.named_parameters()))
        if (
            f"{name}$$${first_name}" not in pyro.get_param_store()
            or first.device != like.device
            or first.shape[-1] != like.shape[-1]
        ):
            module = None
    if module is None:
        stored = any(k.startswith(name + "$$$") for k in pyro.get_param_store().keys())
        # Rebuilding a network whose values the store already holds (a resumed run) must
        # not consume random numbers: the resumed run then draws what an uninterrupted one
        # draws, bit for bit.
        devices = [like.device] if like.is_cuda else []
        with torch.random.fork_rng(devices=devices, enabled=stored):
            module = build().to(dtype=like.dtype, device=like.device)
        cache[name] = module
    return pyro.module(name, module, update_module_params=True)


def control_variate_lr(model_lr: float, factor: float = 10.0, **adam_args) -> Callable[[str], dict]:
    """``optim_args`` for :class:`pyro.optim.Adam` (or
    :class:`~pyro_discrete.optim.MultiTensorAdam`) giving control variates their own rate.

    The official REBAR code trains control variates with 10x the model's learning rate.
    The callable receives each parameter's name and matches the ``pyro_discrete/`` prefix.

    >>> from pyro.optim import Adam
    >>> optim = Adam(control_variate_lr(1e-3, betas=(0.9, 0.99999)))
    """

    def optim_args(param_name: str) -> dict:
        lr = model_lr * factor if param_name.startswith(PREFIX) else model_lr
        return {"lr": lr, **adam_args}

    return optim_args


def plate_features(x: Tensor, batch_ndim: int, plate_dims: Sequence[int]) -> Tensor:
    """Flatten ``x`` (batch + event shape) into one feature vector per plate element.

    ``plate_dims`` are the (negative) batch dims of the site's vectorised plates; the
    result has those dims first, in order, and the features last.
    """
    kept = sorted(batch_ndim + d for d in plate_dims)
    others = [i for i in range(x.dim()) if i not in kept]
    x = x.permute(kept + others)
    return x.reshape(tuple(x.shape[: len(kept)]) + (-1,))
