"""Pyro inference for discrete latents: :class:`DiscreteELBO` and one class per estimator.

Swap the estimator by changing one argument::

    svi = SVI(model, guide, optim, loss=DiscreteELBO(estimator="relax"))

or use the named classes (``REBAR_ELBO()`` is ``DiscreteELBO(estimator="rebar")``).
:class:`CompiledSVI` is a drop-in for ``SVI`` that traces the whole step once and replays
it as a tensor program (or one CUDA graph).
"""

from __future__ import annotations

from pyro_discrete.infer.compiled import CompiledSVI, CompileError, StructureChangedError
from pyro_discrete.infer.control_variates import control_variate_lr, control_variate_state
from pyro_discrete.infer.elbo import DiscreteELBO
from pyro_discrete.infer.site_estimators import ESTIMATOR_CLASSES, SiteEstimator
from pyro_discrete.infer.sites import SiteError


def _named(estimator: str, class_name: str) -> type[DiscreteELBO]:
    site_class = ESTIMATOR_CLASSES[estimator]

    def __init__(self, num_particles: int = 2 if site_class.multi_sample else 1, **kwargs):
        DiscreteELBO.__init__(self, estimator=estimator, num_particles=num_particles, **kwargs)

    doc = (
        f"``DiscreteELBO(estimator={estimator!r}, ...)``.\n\n"
        + (site_class.__doc__ or "")
        + "\n\nOptions: "
        + (", ".join(f"``{k}`` ({v!r})" for k, v in site_class.defaults.items()) or "none")
        + "; and those of :class:`DiscreteELBO`."
    )
    return type(class_name, (DiscreteELBO,), {"__init__": __init__, "__doc__": doc})


Reinforce_ELBO = _named("reinforce", "Reinforce_ELBO")
NVIL_ELBO = _named("nvil", "NVIL_ELBO")
MuProp_ELBO = _named("muprop", "MuProp_ELBO")
RLOO_ELBO = _named("rloo", "RLOO_ELBO")
VIMCO_ELBO = _named("vimco", "VIMCO_ELBO")
ARM_ELBO = _named("arm", "ARM_ELBO")
DisARM_ELBO = _named("disarm", "DisARM_ELBO")
REBAR_ELBO = _named("rebar", "REBAR_ELBO")
RELAX_ELBO = _named("relax", "RELAX_ELBO")
GumbelSoftmax_ELBO = _named("gumbel", "GumbelSoftmax_ELBO")
StraightThrough_ELBO = _named("st", "StraightThrough_ELBO")
GumbelRao_ELBO = _named("gumbel_rao", "GumbelRao_ELBO")

#: estimator name -> its ELBO class
ESTIMATORS: dict[str, type[DiscreteELBO]] = {
    "reinforce": Reinforce_ELBO,
    "nvil": NVIL_ELBO,
    "muprop": MuProp_ELBO,
    "rloo": RLOO_ELBO,
    "vimco": VIMCO_ELBO,
    "arm": ARM_ELBO,
    "disarm": DisARM_ELBO,
    "rebar": REBAR_ELBO,
    "relax": RELAX_ELBO,
    "gumbel": GumbelSoftmax_ELBO,
    "st": StraightThrough_ELBO,
    "gumbel_rao": GumbelRao_ELBO,
}

__all__ = [
    "ARM_ELBO",
    "CompileError",
    "CompiledSVI",
    "DisARM_ELBO",
    "DiscreteELBO",
    "ESTIMATORS",
    "GumbelRao_ELBO",
    "GumbelSoftmax_ELBO",
    "MuProp_ELBO",
    "NVIL_ELBO",
    "REBAR_ELBO",
    "RELAX_ELBO",
    "RLOO_ELBO",
    "Reinforce_ELBO",
    "SiteError",
    "SiteEstimator",
    "StraightThrough_ELBO",
    "StructureChangedError",
    "VIMCO_ELBO",
    "control_variate_lr",
    "control_variate_state",
]
