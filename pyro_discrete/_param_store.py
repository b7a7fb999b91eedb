"""Pyro's param store in and out of a checkpoint: one format for every path that saves it.

Both the command line's run directory (``pyro-discrete fit``, single- or multi-process) and
:class:`~pyro_discrete.lightning.DiscreteSVIModule` keep the store as
``{"params": {name: unconstrained tensor}, "constraints": {name: constraint name},
"running_statistics": [names]}``: plain tensors and strings, so that checkpoints load with
``torch.load(weights_only=True)``, which cannot run code.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyro
import torch
from torch.distributions import constraints

from pyro_discrete.infer import control_variates as cv

__all__ = ["CONSTRAINTS", "load_param_store_state", "param_store_state"]

#: the constraints a checkpoint can hold, by the name it stores them under (their repr)
CONSTRAINTS = {
    repr(c): c
    for c in (
        constraints.real,
        constraints.positive,
        constraints.unit_interval,
        constraints.simplex,
    )
}
_REAL = repr(constraints.real)


def param_store_state(prefix: str = "") -> dict:
    """The store's entries whose name starts with ``prefix``, on the CPU, as plain tensors
    and constraint names.

    :raises ValueError: for a parameter whose constraint has no stored name
        (:data:`CONSTRAINTS`), naming it.
    """
    store = pyro.get_param_store()
    state = store.get_state()
    params, names = {}, {}
    for name, value in state["params"].items():
        if not name.startswith(prefix):
            continue
        key = repr(state["constraints"][name])
        if key not in CONSTRAINTS:
            raise ValueError(f"cannot checkpoint parameter {name!r} with constraint {key}")
        params[name] = value.detach().cpu().clone()
        names[name] = key
    running = sorted(n for n in cv.running_statistics() if n.startswith(prefix))
    return {"params": params, "constraints": names, "running_statistics": running}


def load_param_store_state(
    state: dict,
    required: Iterable[str] = (),
    device: torch.device | None = None,
    strict: bool = False,
) -> None:
    """Write :func:`param_store_state` output into the live param store, in place.

    Entries the store holds are overwritten in place, so that optimizers, DDP wrappers and
    :func:`pyro.module` networks keep their tensors; entries it lacks (control-variate
    state that estimators create lazily) are added, on ``device`` (default: where the
    checkpoint's tensor is), with their constraint, and the estimator picks them up when it
    registers them.

    :param required: names that the checkpoint must contain (the trained parameters).
    :param strict: refuse a constrained entry that the store lacks, for callers that have
        created every parameter of the model first (a missing one then means another model).
    :raises ValueError: naming the parameter, when shapes differ, a required parameter is
        missing, or a constraint has no stored name (the checkpoint was written for another
        model, guide or estimator, or by something else).
    """
    store = pyro.get_param_store()
    saved = state["params"]
    missing = sorted(set(required) - set(saved))
    if missing:
        raise ValueError(
            f"the checkpoint has no value for parameter(s) {missing}: it was written for "
            "another model, guide or estimator; resume with the same ones, or start afresh"
        )
    current = dict(store.named_parameters())
    for name, value in saved.items():
        if name in current and current[name].shape != value.shape:
            raise ValueError(
                f"parameter {name!r} has shape {tuple(value.shape)} in the checkpoint "
                f"but {tuple(current[name].shape)} here: the checkpoint was written "
                "for another model (layer widths, latent sizes); resume with the same one"
            )
        constraint = state["constraints"].get(name, _REAL)
        if name not in current and strict and constraint != _REAL:
            raise ValueError(
                f"parameter {name!r} ({constraint}) of the checkpoint was not created by this "
                "model's warm-up step: the checkpoint was written for another model, guide or "
                "estimator"
            )
        if name not in current and constraint not in CONSTRAINTS:
            raise ValueError(
                f"parameter {name!r} of the checkpoint has a constraint without a stored name "
                f"({state['constraints'][name]}): it was not written by pyro_discrete"
            )
    added = {}
    with torch.no_grad():
        for name, value in saved.items():
            if name in current:
                current[name].copy_(value)
            else:
                target = value if device is None else value.to(device)
                added[name] = target.clone().requires_grad_(target.is_floating_point())
    if added:
        store.set_state(
            {
                "params": added,
                "constraints": {
                    n: CONSTRAINTS[state["constraints"].get(n, _REAL)] for n in added
                },
            }
        )
