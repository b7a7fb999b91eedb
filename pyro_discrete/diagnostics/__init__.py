"""Diagnostics for discrete-latent inference, usable on any Pyro model/guide pair.

- :func:`importance_weighted_bound`, :func:`elbo_estimate`: bounds on :math:`\\log p(x)`;
- :func:`gradient_variance`, :func:`bias_ztest`: a gradient estimator's variance and bias
  at fixed parameter values;
- :func:`to_inference_data`, :func:`psis_khat`: guide draws and importance weights in ArviZ,
  and the PSIS Pareto :math:`\\hat k` of the guide.
"""

from .bounds import elbo_estimate, importance_weighted_bound, log_importance_weights
from .inference_data import psis_khat, to_inference_data
from .variance import (
    BiasTest,
    GradientStatistics,
    ParamStoreSnapshot,
    bias_ztest,
    gradient_samples,
    gradient_variance,
    guide_param_names,
)

__all__ = [
    "BiasTest",
    "GradientStatistics",
    "ParamStoreSnapshot",
    "bias_ztest",
    "elbo_estimate",
    "gradient_samples",
    "gradient_variance",
    "guide_param_names",
    "importance_weighted_bound",
    "log_importance_weights",
    "psis_khat",
    "to_inference_data",
]
