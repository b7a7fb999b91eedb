"""The one error type of the command line."""

from __future__ import annotations

__all__ = ["CLIError"]


class CLIError(Exception):
    """Bad input to the command line: reported as one line on stderr with exit status 2."""
