"""The run directory of ``pyro-discrete fit``: configuration, checkpoint and metrics files.

A run directory holds ``config.json`` (the options the run was started with),
``checkpoint.pt`` (everything needed to continue it exactly), ``metrics.csv`` (the training
curve) and, once it has finished, ``summary.json``. Every file is replaced atomically
(:mod:`pyro_discrete._io`), so a kill at any moment leaves the previous version whole.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from pyro_discrete._io import atomic_torch_save, atomic_write_text, orphaned_temporaries
from pyro_discrete._param_store import CONSTRAINTS, load_param_store_state, param_store_state

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
    "make_checkpoint",
    "save_checkpoint",
    "check_checkpoint",
    "check_same_run",
    "load_model_state",
    "option_flag",
    "remove_orphaned_temporaries",
]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
SUMMARY = "summary.json"
METRICS = "metrics.csv"
#: 2: the checkpoint records the run's training options and its smoothed-ELBO state
FORMAT_VERSION = 2
#: options that fix what a run computes: a resumed run must keep every one of them
TRAINING_OPTIONS = (
    "model",
    "estimator",
    "data",
    "binarization",
    "batch_size",
    "lr",
    "cv_lr_factor",
    "seed",
)
_CONFIG_FIELDS = {
    "model": str,
    "estimator": str,
    "data": str,
    "binarization": str,
    "batch_size": int,
    "lr": (int, float),
    "cv_lr_factor": (int, float),
    "seed": int,
    "steps": int,
}
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


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("number" if k is float else k.__name__ for k in kinds)


def _damaged(path: Path, what: str) -> CLIError:
    return CLIError(
        f"{path} {what}; it was not written whole by pyro-discrete fit (which replaces its "
        "files atomically) or was changed since: restore it, or start the run again with "
        "--overwrite"
    )


def read_config(run_dir: Path) -> dict:
    """The ``config.json`` of a run directory, checked for every option a run needs.

    :raises CLIError: if it is missing, unreadable, not JSON, or lacks an option.
    """
    path = run_dir / CONFIG
    if not path.is_file():
        raise CLIError(
            f"{run_dir} is not a pyro-discrete run directory (no {CONFIG}); pass the --out "
            "directory of a `pyro-discrete fit` run"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _damaged(path, "is not text") from None
    except json.JSONDecodeError as e:
        detail = f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        raise _damaged(path, detail) from None
    if not isinstance(config, dict):
        raise _damaged(path, "does not hold a JSON object")
    wrong = [
        f"{key} ({_type_name(kind)})"
        for key, kind in _CONFIG_FIELDS.items()
        if not isinstance(config.get(key), kind) or isinstance(config.get(key), bool)
    ]
    if wrong:
        raise _damaged(path, f"lacks or mistypes {', '.join(wrong)}")
    return config


def write_config(run_dir: Path, config: dict) -> None:
    atomic_write_text(run_dir / CONFIG, json.dumps(config, indent=2) + "\n")


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
    return _damaged(path, f"is truncated or damaged (torch.load: {first})")


def _read_checkpoint_file(path: Path) -> object:
    with path.open("rb") as f:
        head = f.read(4)
    if not head:
        raise _damaged(path, "is empty (0 bytes)")
    if head != _ZIP_MAGIC:
        raise _damaged(
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
        raise _damaged(path, f"holds a {type(checkpoint).__name__}, not a checkpoint")
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
        raise _damaged(path, f"lacks or mistypes {', '.join(wrong)}")
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


def option_flag(key: str) -> str:
    """The command-line flag of a config key: ``batch_size`` -> ``--batch-size``."""
    return "--" + key.replace("_", "-")


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


def remove_orphaned_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files that a process killed mid-write left; the ones deleted.

    Only to be called by the holder of the run directory's lock: a live writer's
    temporary file looks the same.
    """
    orphans = [
        tmp
        for name in (CHECKPOINT, CONFIG, METRICS, SUMMARY)
        for tmp in orphaned_temporaries(run_dir / name)
    ]
    for tmp in orphans:
        tmp.unlink(missing_ok=True)
    return orphans


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
        raise _damaged(path, "is not consistent: " + "; ".join(problems))
    check_same_run(checkpoint, config, run_dir)
