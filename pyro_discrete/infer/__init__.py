"""Pyro inference for discrete latents: :class:`DiscreteELBO` and one class per estimator.

Swap the estimator by changing one argument::

    svi = SVI(model, guide, optim, loss=DiscreteELBO(estimator="relax"))

or use the named classes of :mod:`pyro_discrete.infer.named` (``REBAR_ELBO()`` is
``DiscreteELBO(estimator="rebar")``), one for every adapter in
:mod:`pyro_discrete.infer.adapters`. :class:`CompiledSVI` is a
drop-in for ``SVI`` that traces the whole step once and replays it as a tensor program (or
one CUDA graph).
"""

from __future__ import annotations

from pyro_discrete.infer.adapters import SiteEstimator, Terms
from pyro_discrete.infer.compiled import CompiledSVI, CompileError, StructureChangedError
from pyro_discrete.infer.control_variates import (
    control_variate_lr,
    control_variate_state,
    running_statistics,
)
from pyro_discrete.infer.dependencies import BlackBoxCostWarning
from pyro_discrete.infer.elbo import DiscreteELBO, NonFiniteLossError
from pyro_discrete.infer.named import (
    ARM_ELBO,
    ESTIMATORS,
    LAX_ELBO,
    NVIL_ELBO,
    REBAR_ELBO,
    RELAX_ELBO,
    RLOO_ELBO,
    RODEO_ELBO,
    VIMCO_ELBO,
    DecoupledStraightThrough_ELBO,
    DisARM_ELBO,
    DoubleCV_ELBO,
    ExpectationModel_ELBO,
    GumbelRao_ELBO,
    GumbelSoftmax_ELBO,
    IndeCateR_ELBO,
    MuProp_ELBO,
    NamedELBO,
    Reinforce_ELBO,
    ReinMax_ELBO,
    ReinMaxCV_ELBO,
    ReinMaxRao_ELBO,
    StraightThrough_ELBO,
    UnorderedSet_ELBO,
)
from pyro_discrete.infer.sites import SiteError

__all__ = [
    "BlackBoxCostWarning",
    "ExpectationModel_ELBO",
    "ReinMaxCV_ELBO",
    "ReinMaxRao_ELBO",
    "DecoupledStraightThrough_ELBO",
    "IndeCateR_ELBO",
    "LAX_ELBO",
    "CompileError",
    "CompiledSVI",
    "DiscreteELBO",
    "ESTIMATORS",
    "NamedELBO",
    "NonFiniteLossError",
    "SiteError",
    "SiteEstimator",
    "StructureChangedError",
    "Terms",
    "control_variate_lr",
    "control_variate_state",
    "running_statistics",
    "ARM_ELBO",
    "DisARM_ELBO",
    "DoubleCV_ELBO",
    "GumbelRao_ELBO",
    "GumbelSoftmax_ELBO",
    "MuProp_ELBO",
    "NVIL_ELBO",
    "REBAR_ELBO",
    "RELAX_ELBO",
    "RLOO_ELBO",
    "RODEO_ELBO",
    "ReinMax_ELBO",
    "Reinforce_ELBO",
    "StraightThrough_ELBO",
    "UnorderedSet_ELBO",
    "VIMCO_ELBO",
]
