"""The run directory of ``pyro-discrete fit``: its files' names and its configuration.

A run directory holds ``config.json`` (the options the run was started with),
``checkpoint.pt`` (everything needed to continue it exactly), ``metrics.csv`` (the training
curve) and, once it has finished, ``summary.json``. Every file is replaced atomically
(:mod:`pyro_discrete._io`), so a kill at any moment leaves the previous version whole.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from pyro_discrete._io import atomic_write_text, orphaned_temporaries

from .errors import CLIError

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "METRICS",
    "SUMMARY",
    "FORMAT_VERSION",
    "TRAINING_OPTIONS",
    "check_resume_options",
    "damaged",
    "read_config",
    "write_config",
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
def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("number" if k is float else k.__name__ for k in kinds)


def damaged(path: Path, what: str) -> CLIError:
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
        raise damaged(path, "is not text") from None
    except json.JSONDecodeError as e:
        detail = f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        raise damaged(path, detail) from None
    if not isinstance(config, dict):
        raise damaged(path, "does not hold a JSON object")
    wrong = [
        f"{key} ({_type_name(kind)})"
        for key, kind in _CONFIG_FIELDS.items()
        if not isinstance(config.get(key), kind) or isinstance(config.get(key), bool)
    ]
    if wrong:
        raise damaged(path, f"lacks or mistypes {', '.join(wrong)}")
    return config


def write_config(run_dir: Path, config: dict) -> None:
    atomic_write_text(run_dir / CONFIG, json.dumps(config, indent=2) + "\n")


def option_flag(key: str) -> str:
    """The command-line flag of a config key: ``batch_size`` -> ``--batch-size``."""
    return "--" + key.replace("_", "-")


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


def check_resume_options(given: Mapping[str, object], config: dict, out: Path) -> None:
    """:raises CLIError: naming every training option given that differs from the run's."""
    differences = [
        f"{option_flag(key)} {given[key]} (the run has {config[key]})"
        for key in TRAINING_OPTIONS
        if key in given and given[key] != config[key]
    ]
    if differences:
        raise CLIError(
            f"--resume: {'; '.join(differences)} does not match the run in {out}; a resumed "
            "run keeps the options it was started with: drop them to resume, or start a new "
            "--out"
        )
