"""``python -m pyro_discrete.cli``: the ``pyro-discrete`` console script."""

import sys

from pyro_discrete.cli import main

sys.exit(main())
