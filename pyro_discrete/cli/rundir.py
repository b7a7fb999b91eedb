"""The run directory of ``pyro-discrete fit``: configuration, checkpoint and metrics files.

A run directory holds ``config.json`` (the options the run was started with),
``checkpoint.pt`` (everything needed to continue it exactly), ``metrics.csv`` (the training
curve) and, once it has finished, ``summary.json``. Every file is replaced atomically
(:mod:`pyro_discrete._io`), so a kill at any moment leaves the previous version whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyro
import torch
from torch import nn
from torch.distributions import constraints

from pyro_discrete._io import atomic_torch_save, atomic_write_text

from .errors import CLIError

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "METRICS",
    "SUMMARY",
    "FORMAT_VERSION",
    "param_store_state",
    "load_param_store_state",
    "read_config",
    "write_config",
    "load_checkpoint",
    "save_checkpoint",
    "load_model_state",
]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
SUMMARY = "summary.json"
METRICS = "metrics.csv"
FORMAT_VERSION = 1

# Constraints stored by name, so that a checkpoint holds plain tensors and strings only
# and loads with ``torch.load(weights_only=True)``, which cannot run code.
_CONSTRAINTS = {
    "Real()": constraints.real,
    "GreaterThan(lower_bound=0.0)": constraints.positive,
    "Interval(lower_bound=0.0, upper_bound=1.0)": constraints.unit_interval,
    "Simplex()": constraints.simplex,
}


def param_store_state(prefix: str = "") -> dict:
    """Unconstrained values and constraint names of the store's parameters (``prefix``-ed).

    Plain tensors and strings only, so checkpoints load with ``torch.load(weights_only=True)``
    and cannot run code.

    :raises ValueError: for a parameter whose constraint has no stored name.
    """
    store = pyro.get_param_store()
    known = store.get_state()["constraints"]
    params, names = {}, {}
    for name, value in store.named_parameters():
        if not name.startswith(prefix):
            continue
        key = repr(known[name])
        if key not in _CONSTRAINTS:
            raise ValueError(f"cannot checkpoint parameter {name!r} with constraint {key}")
        params[name] = value.detach().clone()
        names[name] = key
    return {"params": params, "constraints": names}


def load_param_store_state(state: dict) -> None:
    """Restore :func:`param_store_state` output into the live param store.

    Existing parameters are overwritten *in place* so that modules registered with
    :func:`pyro.module` stay tied to the store; missing ones (control-variate state created
    lazily by an estimator) are added, and the estimator picks them up when it registers
    them (``pyro.param`` returns stored values; control-variate networks are registered with
    ``update_module_params=True``).
    """
    store = pyro.get_param_store()
    current = dict(store.named_parameters())
    missing = {}
    with torch.no_grad():
        for name, value in state["params"].items():
            if name in current:
                current[name].copy_(value)
            else:
                missing[name] = value.clone().requires_grad_()
    if missing:
        store.set_state(
            {
                "params": missing,
                "constraints": {n: _CONSTRAINTS[state["constraints"][n]] for n in missing},
            }
        )


def read_config(run_dir: Path) -> dict:
    """The ``config.json`` of a run directory."""
    path = run_dir / CONFIG
    if not path.is_file():
        raise CLIError(
            f"{run_dir} is not a pyro-discrete run directory (no {CONFIG}); pass the --out "
            "directory of a `pyro-discrete fit` run"
        )
    return json.loads(path.read_text())


def write_config(run_dir: Path, config: dict) -> None:
    atomic_write_text(run_dir / CONFIG, json.dumps(config, indent=2) + "\n")


def load_checkpoint(run_dir: Path) -> dict:
    """The ``checkpoint.pt`` of a run directory, loaded with ``weights_only=True``."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise CLIError(
            f"{run_dir} has no {CHECKPOINT} (the run stopped before its first "
            "checkpoint); start it again with --overwrite"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise CLIError(f"cannot read {path}: {e}") from None


def save_checkpoint(run_dir: Path, checkpoint: dict) -> None:
    atomic_torch_save(checkpoint, run_dir / CHECKPOINT)


def load_model_state(model: nn.Module, state: dict, run_dir: Path, model_name: str) -> None:
    """Load a checkpoint's model parameters; :raises CLIError: if they belong to another model."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CLIError(
            f"the checkpoint in {run_dir} does not fit model {model_name!r} ({first}); it was "
            "written for another model or model version"
        ) from None
