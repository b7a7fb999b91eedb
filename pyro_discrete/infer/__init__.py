"""Pyro inference for discrete latents: :class:`DiscreteELBO` and one class per estimator.

Swap the estimator by changing one argument::

    svi = SVI(model, guide, optim, loss=DiscreteELBO(estimator="relax"))

or use the named classes (``REBAR_ELBO()`` is ``DiscreteELBO(estimator="rebar")``), made
for every adapter in :mod:`pyro_discrete.infer.adapters`. :class:`CompiledSVI` is a
drop-in for ``SVI`` that traces the whole step once and replays it as a tensor program (or
one CUDA graph).
"""

from __future__ import annotations

from pyro_discrete.infer.adapters import ESTIMATOR_CLASSES, SiteEstimator, Terms
from pyro_discrete.infer.compiled import CompiledSVI, CompileError, StructureChangedError
from pyro_discrete.infer.control_variates import (
    control_variate_lr,
    control_variate_state,
    running_statistics,
)
from pyro_discrete.infer.elbo import DiscreteELBO, NonFiniteLossError
from pyro_discrete.infer.sites import SiteError

#: class names that are not ``<Name>_ELBO`` of the adapter class
_CLASS_NAMES = {"reinforce": "Reinforce_ELBO", "gumbel": "GumbelSoftmax_ELBO"}


def _named(estimator: str) -> type[DiscreteELBO]:
    site_class = ESTIMATOR_CLASSES[estimator]
    class_name = _CLASS_NAMES.get(estimator, f"{site_class.__name__}_ELBO")

    def __init__(self, num_particles: int = 2 if site_class.multi_sample else 1, **kwargs):
        DiscreteELBO.__init__(self, estimator=estimator, num_particles=num_particles, **kwargs)

    doc = (
        f"``DiscreteELBO(estimator={estimator!r}, ...)``.\n\n"
        + (site_class.__doc__ or "")
        + "\n\nOptions: "
        + (", ".join(f"``{k}`` ({v!r})" for k, v in site_class.defaults.items()) or "none")
        + "; and those of :class:`DiscreteELBO`."
    )
    cls = type(class_name, (DiscreteELBO,), {"__init__": __init__, "__doc__": doc})
    cls.__module__ = __name__
    return cls


#: estimator name -> its ELBO class
ESTIMATORS: dict[str, type[DiscreteELBO]] = {name: _named(name) for name in ESTIMATOR_CLASSES}
globals().update({cls.__name__: cls for cls in ESTIMATORS.values()})

__all__ = [
    "CompileError",
    "CompiledSVI",
    "DiscreteELBO",
    "ESTIMATORS",
    "NonFiniteLossError",
    "SiteError",
    "SiteEstimator",
    "StructureChangedError",
    "Terms",
    "control_variate_lr",
    "control_variate_state",
    "running_statistics",
    *sorted(cls.__name__ for cls in ESTIMATORS.values()),
]
