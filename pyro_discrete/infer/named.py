"""One :class:`~pyro_discrete.infer.elbo.DiscreteELBO` subclass per estimator.

``REBAR_ELBO()`` is ``DiscreteELBO(estimator="rebar")``. The classes are written out, not
generated, so that IDEs, type checkers and ``help()`` see them; a test checks that every
registered estimator has exactly one. Adding an estimator adds one three-line class here.
"""

from __future__ import annotations

import inspect
from typing import ClassVar

from pyro_discrete.infer.adapters import ESTIMATOR_CLASSES
from pyro_discrete.infer.elbo import DiscreteELBO


class NamedELBO(DiscreteELBO):
    """``DiscreteELBO(estimator=estimator_name, ...)``; multi-sample estimators default to
    two particles. The documentation of each subclass is its adapter's."""

    estimator_name: ClassVar[str]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        adapter = ESTIMATOR_CLASSES[cls.estimator_name]
        options = ", ".join(f"``{k}`` ({v!r})" for k, v in adapter.defaults.items())
        cls.__doc__ = (
            f"``DiscreteELBO(estimator={cls.estimator_name!r}, ...)``.\n\n"
            + inspect.cleandoc(adapter.__doc__ or "")
            + f"\n\nOptions: {options or 'none'}; and those of :class:`DiscreteELBO`."
        )

    def __init__(self, num_particles: int | None = None, **kwargs) -> None:
        if num_particles is None:
            num_particles = 2 if ESTIMATOR_CLASSES[self.estimator_name].multi_sample else 1
        super().__init__(estimator=self.estimator_name, num_particles=num_particles, **kwargs)


class Reinforce_ELBO(NamedELBO):
    estimator_name = "reinforce"


class NVIL_ELBO(NamedELBO):
    estimator_name = "nvil"


class MuProp_ELBO(NamedELBO):
    estimator_name = "muprop"


class RLOO_ELBO(NamedELBO):
    estimator_name = "rloo"


class VIMCO_ELBO(NamedELBO):
    estimator_name = "vimco"


class ARM_ELBO(NamedELBO):
    estimator_name = "arm"


class DisARM_ELBO(NamedELBO):
    estimator_name = "disarm"


class DoubleCV_ELBO(NamedELBO):
    estimator_name = "double_cv"


class RODEO_ELBO(NamedELBO):
    estimator_name = "rodeo"


class UnorderedSet_ELBO(NamedELBO):
    estimator_name = "unordered_set"


class REBAR_ELBO(NamedELBO):
    estimator_name = "rebar"


class RELAX_ELBO(NamedELBO):
    estimator_name = "relax"


class GumbelSoftmax_ELBO(NamedELBO):
    estimator_name = "gumbel"


class StraightThrough_ELBO(NamedELBO):
    estimator_name = "st"


class GumbelRao_ELBO(NamedELBO):
    estimator_name = "gumbel_rao"


class ReinMax_ELBO(NamedELBO):
    estimator_name = "reinmax"


class LAX_ELBO(NamedELBO):
    estimator_name = "lax"


class IndeCateR_ELBO(NamedELBO):
    estimator_name = "indecater"


class DecoupledStraightThrough_ELBO(NamedELBO):
    estimator_name = "decoupled_st"


class ReinMaxRao_ELBO(NamedELBO):
    estimator_name = "reinmax_rao"


class ReinMaxCV_ELBO(NamedELBO):
    estimator_name = "reinmax_cv"


class ExpectationModel_ELBO(NamedELBO):
    estimator_name = "expectation_model"


#: estimator name -> its ELBO class
ESTIMATORS: dict[str, type[NamedELBO]] = {
    cls.estimator_name: cls for cls in NamedELBO.__subclasses__()
}
