"""``pyro-discrete demo``: ``compare`` with settings for a first look (what ``make demo`` runs)."""

from __future__ import annotations

from .compare import CompareOptions, compare_into

__all__ = ["DEMO_ESTIMATORS", "cmd_demo"]

DEMO_ESTIMATORS = ("reinforce", "nvil", "muprop", "rebar", "relax")


def cmd_demo(options: CompareOptions) -> int:
    """Compare the demo estimators within ``--time-budget``, replacing ``--out``."""
    written = compare_into(
        options.out,
        True,
        options.settings,
        options.progress,
        options.started,
        options.as_process,
    )
    print(f"demo report written to {written}")
    return 0
