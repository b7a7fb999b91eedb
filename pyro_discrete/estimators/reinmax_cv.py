r"""ReinMax-CV (our construction): ReinMax with a control variate of known mean.
**Biased** as ReinMax: the same expectation, a lower variance.

ReinMax's estimate is :math:`M(D)\nabla f(D)` with
:math:`M(D) = 2J(\pi_1(D)) - \tfrac12 J(\pi_0)`,
:math:`\pi_1(D) = \tfrac12(p_\lambda + D)`, :math:`p_\lambda = \mathrm{softmax}(\ell/\lambda)`
and :math:`J(p) = \mathrm{diag}(p) - pp^\top` (:mod:`pyro_discrete.estimators.reinmax`).
The mean of :math:`M(D)` over :math:`D \sim \pi_0` has a closed form,

.. math::

    \bar M = \mathbb E_D[M(D)]
           = \mathrm{diag}(p_\lambda + \pi_0)
             - \tfrac12\big(p_\lambda p_\lambda^\top + p_\lambda\pi_0^\top + \pi_0 p_\lambda^\top
             + \mathrm{diag}(\pi_0)\big) - \tfrac12 J(\pi_0),

which at :math:`\lambda = 1` is straight-through's :math:`J(\pi_0)` (ReinMax's trapezoid
averaged over the categories). So for any vector :math:`c` independent of :math:`D`,
:math:`(\bar M - M(D))c` has mean zero and

.. math::

    \hat g_{\mathrm{CV}} = M(D)\big(\nabla f(D) - c\big) + \bar M c

has ReinMax's expectation, with a variance that vanishes when :math:`\nabla f` is constant
and :math:`c` equals it. With :math:`K \ge 2` independent samples (particles) :math:`c_k`
is the mean of the other samples' :math:`\nabla f(D_j)`, :math:`j \ne k` (independent of
:math:`D_k`). A Bernoulli is the two-class case.

Wang and Bui (2026, "Beyond ReinMax") propose a control-variate ReinMax; **this module is
our construction, not the paper's formula**. Their eq. 18, as two public implementations
that cite it write it (the paper's text was not reachable here), adds
:math:`\eta\,(J_{GR}(\theta_D) - J_{GS}(\theta_D, G))\nabla f(D)` to ReinMax, the
Gumbel-Rao and single-draw Gumbel-softmax Jacobians at the midpoint's logits; the two
disagree on the noise :math:`G` of the second term, and a correction whose mean given
:math:`D` is zero cannot lower the variance of a function of :math:`D`, so that choice
decides what the estimator is; we could not check it. Cost: ReinMax's, with
:math:`K \ge 2` samples.

References: L. Liu, C. Dong, X. Liu, B. Yu, J. Gao (2023), *Bridging Discrete and
Backpropagation: Straight-Through and Beyond*; D. Wang, T. D. Bui (2026), *Beyond ReinMax:
Low-Variance Gradient Estimators for Discrete Latent Variables* (arXiv 2603.08257;
abstract only).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_discrete.estimators.reinmax import reinmax_logit_gradient

__all__ = ["expected_reinmax_product", "reinmax_cv_correction", "reinmax_cv_logit_gradient"]


def expected_reinmax_product(
    logits: Tensor, baseline: Tensor, temperature: Tensor | float = 1.0, one_hot: bool = True
) -> Tensor:
    r""":math:`\bar M c = \mathbb E_{D \sim \pi_0}[M(D)]\,c`, ReinMax's matrix averaged over
    the sample, applied to ``baseline`` :math:`c` (closed form, no enumeration)."""
    temperature = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
    c = baseline
    if one_hot:
        if temperature.dim():
            temperature = temperature.unsqueeze(-1)
        p = torch.softmax(logits / temperature, -1)
        pi = torch.softmax(logits, -1)
        p_c, pi_c = (p * c).sum(-1, keepdim=True), (pi * c).sum(-1, keepdim=True)
        # E[J(pi_1)] c with E[pi_1] = (p + pi)/2, E[pi_1 pi_1^T] = (pp^T + p pi^T + pi p^T
        # + diag(pi))/4
        midpoint = 0.5 * (p + pi) * c - 0.25 * (p * p_c + p * pi_c + pi * p_c + pi * c)
        return 2 * midpoint - 0.5 * (pi * c - pi * pi_c)
    p, pi = torch.sigmoid(logits / temperature), torch.sigmoid(logits)
    # E[q(1 - q)] for q = (p + b)/2, b ~ Bernoulli(pi)
    midpoint = 0.5 * (p + pi) - 0.25 * (p * p + 2 * p * pi + pi)
    return (2 * midpoint - 0.5 * pi * (1 - pi)) * c


def reinmax_cv_correction(
    logits: Tensor,
    hard: Tensor,
    baseline: Tensor,
    temperature: Tensor | float = 1.0,
    one_hot: bool = True,
) -> Tensor:
    r"""The control variate :math:`(\bar M - M(D))c`, mean zero for :math:`c` independent
    of :math:`D`, to add to ReinMax's estimate."""
    mean_term = expected_reinmax_product(logits, baseline, temperature, one_hot)
    return mean_term - reinmax_logit_gradient(logits, hard, baseline, temperature, one_hot)


def reinmax_cv_logit_gradient(
    logits: Tensor,
    hard: Tensor,
    value_gradient: Tensor,
    baseline: Tensor,
    temperature: Tensor | float = 1.0,
    one_hot: bool = True,
) -> Tensor:
    r""":math:`\hat g_{\mathrm{CV}} = M(D)(\nabla f(D) - c) + \bar M c` for
    ``value_gradient`` :math:`\nabla f(D)` and ``baseline`` :math:`c` (shapes as in
    :func:`~pyro_discrete.estimators.reinmax_logit_gradient`)."""
    estimate = reinmax_logit_gradient(logits, hard, value_gradient, temperature, one_hot)
    return estimate + reinmax_cv_correction(logits, hard, baseline, temperature, one_hot)
