"""One adapter per estimator family, each turning discrete guide sites into loss terms.

Importing this package imports every module in it, and each :class:`SiteEstimator`
subclass with a ``name`` registers itself in :data:`ESTIMATOR_CLASSES`: adding an
estimator is one pure module in :mod:`pyro_discrete.estimators` and one module here.
"""

from __future__ import annotations

import importlib
import pkgutil

from pyro_discrete.infer.adapters.base import (
    ALIASES,
    ESTIMATOR_CLASSES,
    SiteEstimator,
    Terms,
    make_estimator,
    variance_gradient_loss,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "ALIASES",
    "ESTIMATOR_CLASSES",
    "SiteEstimator",
    "Terms",
    "make_estimator",
    "variance_gradient_loss",
]
