"""``pyro-discrete demo``: ``compare`` with settings for a first look (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .compare import compare_into, compare_settings, estimator_list

__all__ = ["DEMO_ESTIMATORS", "cmd_demo"]

DEMO_ESTIMATORS = ("reinforce", "nvil", "muprop", "rebar", "relax")


def cmd_demo(args: argparse.Namespace) -> int:
    """Compare the demo estimators within ``--time-budget``, replacing ``--out``."""
    settings = compare_settings(args, estimator_list(args.estimators))
    report = compare_into(
        Path(args.out),
        True,
        settings,
        not args.no_progress,
        getattr(args, "started", None),
        getattr(args, "as_process", False),
    )
    print(f"demo report written to {report}")
    return 0
