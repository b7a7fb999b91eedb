r"""``double_cv``: RLOO with a learned Taylor control variate (Titsias & Shi, AISTATS 2022).

See :mod:`pyro_discrete.estimators.double_cv` for the formula.
"""

from __future__ import annotations

from pyro_discrete import estimators as E
from pyro_discrete.infer import control_variates as cv
from pyro_discrete.infer.adapters.value_gradient import (
    ValueGradientEstimator,
    sample_dim,
    signal_and_value_gradient,
)


class DoubleCV(ValueGradientEstimator):
    r"""Double control variates (Titsias & Shi 2022) for Bernoulli sites, K =
    ``num_particles`` >= 2 samples and no extra evaluation of the model.

    On top of RLOO's leave-one-out baseline, each sample's signal is corrected by
    :math:`\alpha\, \bar g_{-k}^\top (x_k - \theta)`, the first-order Taylor expansion of
    the signal around the other samples, with :math:`\bar g_{-k}` the mean of their value
    gradients :math:`\nabla_x f` (read from the base pass, see
    :mod:`~pyro_discrete.infer.adapters.value_gradient`); a closed-form term keeps it
    unbiased. :math:`\alpha` is the per-site parameter ``pyro_discrete/double_cv/<site>/alpha``
    (initial value ``alpha``, 0.0: RLOO, as in the paper's code) trained by the SVI
    optimizer on the variance objective, unless ``learn_control_variates=False``.
    """

    name = "double_cv"
    defaults = {"alpha": 0.0, "learn_control_variates": True}

    def validate_options(self) -> None:
        super().validate_options()
        if not isinstance(self.options["alpha"], (int, float)):
            raise TypeError("estimator 'double_cv': alpha must be a number")

    def site_terms(self, ev, site):
        signal, value_grad = signal_and_value_gradient(ev, site)
        dim = sample_dim(ev, site)
        learn = bool(self.options["learn_control_variates"])
        if learn:
            name = cv.state_name(self.name, site.name, "alpha")
            alpha = cv.trained_scalar(name, site.logits, float(self.options["alpha"]))
        else:
            alpha = float(self.options["alpha"])
        grad = E.double_cv_logit_gradient(
            signal, site.hard, site.logits.sigmoid(), value_grad, alpha, dim, site.event_ndim
        )
        return self.logit_terms(site, grad, dim, [alpha] if learn else [])
