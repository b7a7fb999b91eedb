"""Sphinx configuration for the pyro_discrete documentation (``make docs``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import pyro_discrete  # noqa: E402

project = "pyro_discrete"
author = "pyro_discrete developers"
copyright = "2026, pyro_discrete developers"
release = pyro_discrete.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # MathJax 3 copied into _static/mathjax (sets mathjax_path): the site typesets its math
    # without a network; tests/test_docs_site.py checks that no page loads a remote script.
    # It declares no parallel safety, so `sphinx-build -j N` warns (an error under -W).
    "sphinx-mathjax-offline",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = True

# Docstring examples run under pytest --doctest-modules (tests/test_docs.py), with their
# module's globals; Sphinx's doctest builder would run them without those and fail, so it
# only runs explicit ``.. doctest::`` blocks written in the pages.
doctest_test_doctest_blocks = ""
# The doctest builder (sphinx-build -b doctest) shares these imports with every block.
doctest_global_setup = """
import torch
import pyro
torch.manual_seed(0)
"""

html_theme = "sphinx_rtd_theme"
html_title = f"pyro_discrete {release}"
html_static_path = ["_static"]
# Wide tables scroll inside their own box instead of being cut off by the content column.
html_css_files = ["tables.css"]


def _write_cli_help() -> None:
    """Capture ``pyro-discrete --help`` (and each subcommand's) for the CLI page.

    Generated at build time so the page cannot drift from the parser; a failure is
    written into the page, where ``-W`` builds still notice the missing CLI through the
    automodule directive.
    """
    # Under _build (ignored by git and excluded from the sources), not beside the pages.
    out = Path(__file__).parent / "_build" / "generated"
    out.mkdir(parents=True, exist_ok=True)

    def helptext(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "pyro_discrete.cli", *args, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env={**os.environ, "COLUMNS": "88"},
        )
        return proc.stdout if proc.returncode == 0 else proc.stdout + proc.stderr

    top = helptext()
    parts = [top]
    for sub in _subcommands(top):
        parts.append(f"\n$ pyro-discrete {sub} --help\n" + helptext(sub))
    (out / "cli_help.txt").write_text("$ pyro-discrete --help\n" + "".join(parts))


def _subcommands(top: str) -> list[str]:
    """Subcommand names from argparse's help: a "{a,b}" choice list, or the entries
    indented by four spaces under the positional arguments (a ``metavar`` hides the list).
    """
    names: list[str] = []
    for line in top.splitlines():
        brace = re.match(r"^\s+\{([\w,-]+)\}", line)
        if brace:
            names += brace.group(1).split(",")
        entry = re.match(r"^ {4}([a-z][\w-]*)(\s{2,}\S|$)", line)
        if entry:
            names.append(entry.group(1))
    return list(dict.fromkeys(names))


def _write_cli_help_for_cli_page(app) -> None:
    """Generate the help only for a site that has the CLI page: a build of other sources
    with this configuration (``sphinx-build -c docs``, as the tests do) skips the five
    subprocesses.
    """
    if (Path(app.srcdir) / "api" / "cli.rst").exists():
        _write_cli_help()


def setup(app) -> None:
    # config-inited comes before Sphinx looks for changed sources, so an incremental build
    # still sees the regenerated help file as a changed dependency of the CLI page.
    app.connect("config-inited", lambda app, config: _write_cli_help_for_cli_page(app))
