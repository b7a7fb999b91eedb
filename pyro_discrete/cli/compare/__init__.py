"""``pyro-discrete compare``: train several estimators from the same starts, taking turns.

For every seed :math:`i` of ``--seeds N`` (``--seed``, ``--seed + 1``, ...), every estimator
starts from the same initialisation and sees the same minibatches; different seeds give
independent initialisations and data orders, so that the spread over seeds says how much of
a difference between estimators is noise. The package, in the order a comparison runs:

- :mod:`~.settings`: what is compared (:class:`CompareSettings`) and the command's options;
- :mod:`~.schedule`: the rounds of training; :mod:`~.plan`: with ``--time-budget``, the plan
  that fits them (and the optional measurements) into the budget; :mod:`~.budget`: the clock and the
  calibration it plans from;
- :mod:`~.comparison`: the runs taking turns and the measurements along them;
  :mod:`~.pacing`: the budget's checks between rounds; :mod:`~.measure`: ELBO, IW bound,
  gradient variance;
- :mod:`~pyro_discrete.cli.compare.run`: one comparison from start to report, written
  into place whole;
- :mod:`~.outcome`, :mod:`~.stats`, :mod:`~.plots`, :mod:`~.report`: what was measured and
  how it is reported.
"""

from . import report
from .outcome import Outcome
from .run import cmd_compare, compare_into, run_compare
from .settings import CompareOptions, CompareSettings, compare_settings, estimator_list

__all__ = [
    "CompareOptions",
    "CompareSettings",
    "Outcome",
    "cmd_compare",
    "compare_into",
    "compare_settings",
    "estimator_list",
    "report",
    "run_compare",
]
