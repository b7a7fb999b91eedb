"""``checkpoint.pt``: the one checkpoint format of a run, and the one check of it.

:func:`make_checkpoint` builds it (the single- and the multi-process ``fit`` alike);
:func:`load_checkpoint` reads it with ``torch.load(weights_only=True)`` (which cannot run
code) and checks every field's type and that every tensor is finite;
:func:`check_checkpoint` checks every value against the run's ``config.json``; and
:func:`load_model_state` checks every model tensor's shape, naming the first that does not
fit. :class:`~pyro_discrete.cli.run.Run` runs them all before anything is written.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from pyro_discrete._io import atomic_torch_save
from pyro_discrete._param_store import CONSTRAINTS, param_store_state

from .errors import CLIError
from .rundir import CHECKPOINT, CONFIG, FORMAT_VERSION, TRAINING_OPTIONS, damaged, option_flag

__all__ = [
    "check_checkpoint",
    "check_same_run",
    "load_checkpoint",
    "load_model_state",
    "make_checkpoint",
    "model_state_mismatch",
    "save_checkpoint",
]


_CHECKPOINT_FIELDS = {
    "step": int,
    "elapsed": (int, float),
    "excluded": (int, float),
    "model": dict,
    "param_store": dict,
    "optim": dict,
    "loader": dict,
    "rng": torch.Tensor,
}


_ZIP_MAGIC = b"PK\x03\x04"


def _read_error(path: Path, error: Exception) -> CLIError:
    text = str(error)
    unsupported = re.search(r"Unsupported global: (?:GLOBAL )?([\w.]+)", text)
    if unsupported:
        # torch's own advice here (weights_only=False) would run whatever code the file holds
        return CLIError(
            f"{path} holds a Python object ({unsupported.group(1)}), not only tensors; "
            "pyro-discrete checkpoints hold tensors and plain values, and loading other "
            "objects could run code, so it is not loaded"
        )
    first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else ""
    if not first or "weights_only" in first:
        first = type(error).__name__
    return damaged(path, f"is truncated or damaged (torch.load: {first})")


def _read_checkpoint_file(path: Path) -> object:
    with path.open("rb") as f:
        head = f.read(4)
    if not head:
        raise damaged(path, "is empty (0 bytes)")
    if head != _ZIP_MAGIC:
        raise damaged(
            path,
            f"is not a PyTorch checkpoint (it starts with {head!r}, not the "
            "zip header that torch.save writes)",
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every unreadable file is reported alike
        raise _read_error(path, e) from None


def _first_non_finite(tensors: dict) -> str | None:
    for name, value in tensors.items():
        if torch.is_tensor(value) and value.is_floating_point() and not value.isfinite().all():
            return name
    return None


def _check_finite(path: Path, checkpoint: dict) -> None:
    sources = {
        "model parameter": checkpoint["model"],
        "param-store entry": checkpoint["param_store"].get("params", {}),
        "optimiser state of": {
            f"{name} ({key})": value
            for name, state in checkpoint["optim"].items()
            if isinstance(state, dict)
            for key, value in state.items()
        },
    }
    for what, tensors in sources.items():
        name = _first_non_finite(tensors)
        if name is not None:
            raise CLIError(
                f"{path} holds NaN or infinite values ({what} {name!r}), so it cannot be "
                "continued or evaluated: the run diverged before this checkpoint was written, or "
                "the file was changed; start again with --overwrite (and a lower --lr)"
            )


def load_checkpoint(run_dir: Path) -> dict:
    """The ``checkpoint.pt`` of a run directory, loaded with ``weights_only=True`` and checked.

    :raises CLIError: if it is missing, empty, not a checkpoint, lacks a field, or holds
        non-finite values; the message names the file and the problem.
    """
    path = run_dir / CHECKPOINT
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise CLIError(
            f"{path} is {kind}, not a checkpoint file; move it away, then start the run "
            "again with --overwrite"
        )
    if not path.is_file():
        raise CLIError(
            f"{run_dir} has no {CHECKPOINT} (the run stopped before its first "
            "checkpoint); start it again with --overwrite"
        )
    checkpoint = _read_checkpoint_file(path)
    if not isinstance(checkpoint, dict):
        raise damaged(path, f"holds a {type(checkpoint).__name__}, not a checkpoint")
    wrong = [
        f"{key!r}"
        for key, kind in _CHECKPOINT_FIELDS.items()
        if not isinstance(checkpoint.get(key), kind) or isinstance(checkpoint.get(key), bool)
    ]
    store = checkpoint["param_store"]
    if not isinstance(store.get("params"), dict) or not isinstance(store.get("constraints"), dict):
        wrong.append("'param_store' (params and constraints)")
    elif any(store["constraints"].get(n) not in CONSTRAINTS for n in store["params"]):
        wrong.append("'param_store' (a constraint without a stored name)")
    if wrong:
        raise damaged(path, f"lacks or mistypes {', '.join(wrong)}")
    _check_finite(path, checkpoint)
    return checkpoint


def check_same_run(checkpoint: dict, config: dict, run_dir: Path) -> None:
    """:raises CLIError: if the checkpoint was written by a run with other options."""
    if checkpoint.get("model_name") != config["model"]:
        raise CLIError(
            f"{run_dir}: {CHECKPOINT} holds a {checkpoint.get('model_name')!r} model but "
            f"{CONFIG} says {config['model']!r}; the directory mixes two runs"
        )
    # the model was compared above (by name; its parameters are checked when loaded)
    written_by = checkpoint.get("config", {})
    differences = [
        f"{option_flag(key)} {written_by[key]} (config.json: {config[key]})"
        for key in TRAINING_OPTIONS
        if key != "model" and key in written_by and written_by[key] != config[key]
    ]
    if differences:
        raise CLIError(
            f"{run_dir}: {CHECKPOINT} was written by a run with {', '.join(differences)}; the "
            "directory mixes two runs: put back the run's own checkpoint or start again with "
            "--overwrite"
        )


def make_checkpoint(
    config: dict,
    *,
    step: int,
    elapsed: float,
    excluded: float,
    model: nn.Module,
    optim: dict,
    loader: dict,
    ema: dict,
    smoothed: float,
) -> dict:
    """The one checkpoint format, written by the single- and the multi-process ``fit``:
    the step, the training clocks, the model's tensors and Pyro's param store (on the CPU,
    so that a GPU run resumes anywhere), the optimiser's state by param-store name, the data
    position, the RNG state and the smoothed ELBO's state."""
    return {
        "format_version": FORMAT_VERSION,
        "model_name": config["model"],
        "config": {key: config[key] for key in TRAINING_OPTIONS},
        "step": step,
        "elapsed": elapsed,
        "excluded": excluded,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "param_store": param_store_state(),
        "optim": optim,
        "loader": loader,
        "rng": torch.get_rng_state(),
        "ema": ema,
        "smoothed": smoothed,
    }


def save_checkpoint(run_dir: Path, checkpoint: dict) -> None:
    atomic_torch_save(checkpoint, run_dir / CHECKPOINT)


def model_state_mismatch(model: nn.Module, state: dict) -> str | None:
    """What keeps ``state`` from loading into ``model`` (a missing, unexpected or
    differently shaped tensor, named); ``None`` if it fits."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        more = f" and {len(missing) - 1} more" if missing[1:] else ""
        return f"no value for {missing[0]!r}{more}"
    unexpected = [k for k in state if k not in own]
    if unexpected:
        return f"an unexpected tensor {unexpected[0]!r}"
    for key, value in own.items():
        saved = state[key]
        if not torch.is_tensor(saved) or saved.shape != value.shape:
            shape = tuple(saved.shape) if torch.is_tensor(saved) else type(saved).__name__
            return f"{key!r} has shape {shape} in the checkpoint but {tuple(value.shape)} here"
    return None


def load_model_state(model: nn.Module, state: dict, run_dir: Path, model_name: str) -> None:
    """Load a checkpoint's model parameters; :raises CLIError: if they belong to another model,
    naming the first tensor that does not fit."""
    problem = model_state_mismatch(model, state)
    if problem is not None:
        raise CLIError(
            f"{run_dir / CHECKPOINT} does not fit model {model_name!r} ({problem}); it was "
            "written for another model or model version"
        )
    model.load_state_dict(state)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_checkpoint(checkpoint: dict, config: dict, run_dir: Path) -> None:
    """Every field of a checkpoint against itself and its run's ``config.json``, before any
    file is written: the step (a whole number from 0 to the run's ``steps``), the clocks,
    the data position, the smoothed ELBO's state (one update per step) and the options it
    was written with.

    :raises CLIError: naming the field, its value and what it should be.
    """
    path = run_dir / CHECKPOINT
    step = checkpoint["step"]
    problems = []
    if step < 0 or step > config["steps"]:
        problems.append(
            f"'step' is {step}, outside 0 to {config['steps']} (the steps of {CONFIG})"
        )
    elapsed, excluded = checkpoint["elapsed"], checkpoint["excluded"]
    if not (_number(elapsed) and _number(excluded) and 0 <= excluded <= elapsed):
        problems.append(
            f"'elapsed' {elapsed} and 'excluded' {excluded} are not times with "
            "0 <= excluded <= elapsed"
        )
    loader = checkpoint["loader"]
    if not all(isinstance(loader.get(k), int) and loader[k] >= 0 for k in ("epoch", "position")):
        problems.append(f"'loader' {loader} is not a data position (epoch, position >= 0)")
    ema = checkpoint.get("ema")
    count = ema.get("count") if isinstance(ema, dict) else ema
    # one update per step (fewer after resuming a format-1 checkpoint, which had no EMA)
    if ema is not None and not (isinstance(count, int) and 0 <= count <= step):
        problems.append(f"'ema' counts {count} updates, not one per step up to {step}")
    if "smoothed" in checkpoint and not isinstance(checkpoint["smoothed"], (int, float)):
        problems.append(f"'smoothed' is a {type(checkpoint['smoothed']).__name__}, not a number")
    if checkpoint["rng"].dtype != torch.uint8 or checkpoint["rng"].dim() != 1:
        problems.append("'rng' is not a CPU random-number-generator state (bytes)")
    if problems:
        raise damaged(path, "is not consistent: " + "; ".join(problems))
    check_same_run(checkpoint, config, run_dir)


