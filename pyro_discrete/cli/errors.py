"""The one error type of the command line."""

from __future__ import annotations

__all__ = ["CLIError", "Interrupted"]


class CLIError(Exception):
    """Bad input to the command line: reported as one line on stderr with exit status 2."""


class Interrupted(KeyboardInterrupt):
    """A termination signal (``SIGINT``, ``SIGTERM``); the exit status is ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
