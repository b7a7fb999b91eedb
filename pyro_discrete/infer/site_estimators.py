"""Deprecated: the adapters live in :mod:`pyro_discrete.infer.adapters` (one module per
estimator family). This module re-exports their names for code written against 0.1."""

from __future__ import annotations

import warnings

from pyro_discrete.infer.adapters import ESTIMATOR_CLASSES, SiteEstimator, Terms, make_estimator
from pyro_discrete.infer.adapters.antithetic import ARM, DisARM
from pyro_discrete.infer.adapters.relax import REBAR, RELAX
from pyro_discrete.infer.adapters.relaxation import GumbelRao, GumbelSoftmax, StraightThrough
from pyro_discrete.infer.adapters.score_function import NVIL, RLOO, MuProp, Reinforce
from pyro_discrete.infer.adapters.vimco import VIMCO

warnings.warn(
    "pyro_discrete.infer.site_estimators is deprecated: import from pyro_discrete.infer.adapters",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "ARM",
    "ESTIMATOR_CLASSES",
    "MuProp",
    "NVIL",
    "REBAR",
    "RELAX",
    "RLOO",
    "VIMCO",
    "DisARM",
    "GumbelRao",
    "GumbelSoftmax",
    "Reinforce",
    "SiteEstimator",
    "StraightThrough",
    "Terms",
    "make_estimator",
]
