r"""ARM and DisARM: antithetic estimators for factorised Bernoulli variables.

With :math:`u \sim U(0, 1)^d`, :math:`b = 1[u > 1 - \sigma(\phi)]` and its antithetic
partner :math:`\tilde b = 1[u < \sigma(\phi)]` (both are :math:`\mathrm{Bernoulli}(\sigma(\phi))`),
the gradient with respect to the logits :math:`\phi` is estimated by

.. math::

    \hat g_{\mathrm{ARM}} = \big(f(b) - f(\tilde b)\big)\,(u - \tfrac12),

    \hat g_{\mathrm{DisARM}} = \tfrac12 \big(f(b) - f(\tilde b)\big)\,
        (-1)^{\tilde b}\, 1[b \ne \tilde b]\, \sigma(|\phi|).

DisARM integrates out the noise that ARM leaves in, at the same cost (two evaluations of
:math:`f`), and its variance is never larger.

References:

- M. Yin, M. Zhou (2019), *ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary
  Networks*.
- Z. Dong, A. Mnih, G. Tucker (2020), *DisARM: An Antithetic Gradient Estimator for Binary
  Latent Variables*.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["antithetic_uniform", "arm_logit_gradient", "disarm_logit_gradient"]


def antithetic_uniform(u: Tensor) -> Tensor:
    """The antithetic noise :math:`1 - u`: thresholding it gives :math:`\\tilde b`."""
    return 1.0 - u


def arm_logit_gradient(u: Tensor, f_b: Tensor, f_antithetic: Tensor) -> Tensor:
    """ARM's estimate of :math:`\\partial_\\phi \\mathbb E[f(b)]` (detached)."""
    return ((f_b - f_antithetic) * (u - 0.5)).detach()


def disarm_logit_gradient(
    logits: Tensor, b: Tensor, b_antithetic: Tensor, f_b: Tensor, f_antithetic: Tensor
) -> Tensor:
    """DisARM's estimate of :math:`\\partial_\\phi \\mathbb E[f(b)]` (detached)."""
    with torch.no_grad():
        sign = 1.0 - 2.0 * b_antithetic
        differs = (b != b_antithetic).to(logits.dtype)
        return 0.5 * (f_b - f_antithetic) * sign * differs * torch.sigmoid(logits.abs())
