"""Lightning is an optional extra: the core library never imports it."""

from __future__ import annotations

import subprocess
import sys

CORE = (
    "pyro_discrete",
    "pyro_discrete.infer",
    "pyro_discrete.estimators",
    "pyro_discrete.distributions",
    "pyro_discrete.models",
    "pyro_discrete.optim",
    "pyro_discrete.testing",
    # the command line imports Lightning only for fit --devices/--strategy (cli/parallel.py)
    "pyro_discrete.cli",
    "pyro_discrete.cli.fit",
)


def test_core_modules_do_not_import_lightning():
    code = (
        "import importlib, sys\n"
        f"for name in {CORE!r}: importlib.import_module(name)\n"
        "found = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'lightning_fabric'))\n"
        "print(found)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["[]"]
