r"""ReinMax-Rao (our construction): ReinMax with a Rao-Blackwellised Heun midpoint.
**Biased.**

ReinMax (Liu et al. 2023, :mod:`pyro_discrete.estimators.reinmax`) estimates
:math:`\partial_\ell\,\mathbb E[f(D)]` by
:math:`\big(2J(\pi_1) - \tfrac12 J(\pi_0)\big)\nabla f(D)` with the Heun midpoint
:math:`\pi_1 = \tfrac12(\mathrm{softmax}(\ell/\lambda) + D)`, :math:`\pi_0 =
\mathrm{softmax}(\ell)` and :math:`J(p) = \mathrm{diag}(p) - pp^\top`. Its weight on a
rare sample is large (for a Bernoulli at :math:`\lambda = 1` it is :math:`(1-\theta)/2` on
:math:`b = 1`, against straight-through's :math:`\theta(1-\theta)`), hence its variance.

Wang and Bui (2026, "Beyond ReinMax") propose a Rao-Blackwellised ReinMax; only their
abstract was reachable from this project, so **this module is our construction, not the
paper's formula**. It replaces the hard endpoint :math:`D` of the midpoint by its
Gumbel-softmax relaxation :math:`s = \mathrm{softmax}(\tilde z/\tau)` and averages the
midpoint Jacobian over :math:`K` conditional draws :math:`\tilde z_k \sim p(z \mid D)` (the
Gumbel-Rao device of Paulus et al. 2021):

.. math::

    \hat g_{\mathrm{RR}} = \Big(\frac2K\sum_{k=1}^K J(\pi_{1,k})
        - \tfrac12 J(\pi_0)\Big)\nabla f(D),
    \qquad \pi_{1,k} = \tfrac12\big(\mathrm{softmax}(\ell/\lambda)
        + \mathrm{softmax}(\tilde z_k/\tau)\big).

It is the Rao-Blackwellisation over the noise given :math:`D` of the single-draw estimator
(:math:`K = 1`): same mean, lower variance as :math:`K` grows. As :math:`\tau \to 0` the
relaxed endpoint is :math:`D` and :math:`\hat g_{\mathrm{RR}}` is ReinMax exactly; a larger
:math:`\tau` pulls the endpoint towards the mean, which shrinks the weight of rare samples
(lower variance) at the price of ReinMax's second-order exactness. One evaluation of
:math:`f` and its gradient, as ReinMax, plus :math:`K` conditional Gumbel draws.

References: L. Liu, C. Dong, X. Liu, B. Yu, J. Gao (2023), *Bridging Discrete and
Backpropagation: Straight-Through and Beyond*; M. Paulus, C. Maddison, A. Krause (2021),
*Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient Estimator*; D. Wang,
T. D. Bui (2026), *Beyond ReinMax: Low-Variance Gradient Estimators for Discrete Latent
Variables* (arXiv 2603.08257; abstract only).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["heun_midpoints", "reinmax_rao_logit_gradient"]


def heun_midpoints(
    logits: Tensor, endpoints: Tensor, temperature: Tensor | float = 1.0, one_hot: bool = True
) -> Tensor:
    r""":math:`\tfrac12(\mathrm{softmax}(\ell/\lambda) + s_k)` for endpoints :math:`s_k`
    stacked along a leading dim (ReinMax's midpoint when :math:`s = D`). ``temperature``
    broadcasts against the batch shape (without the category dim)."""
    temperature = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
    if one_hot:
        if temperature.dim():
            temperature = temperature.unsqueeze(-1)
        tempered = torch.softmax(logits / temperature, -1)
    else:
        tempered = torch.sigmoid(logits / temperature)
    return 0.5 * (tempered + endpoints)


def _jacobian_product(p: Tensor, g: Tensor, one_hot: bool) -> Tensor:
    # J(p) g, J(p) = diag(p) - p p^T (softmax) or p (1 - p) (sigmoid)
    if one_hot:
        return p * g - p * (p * g).sum(-1, keepdim=True)
    return p * (1 - p) * g


def reinmax_rao_logit_gradient(
    logits: Tensor,
    endpoints: Tensor,
    value_gradient: Tensor,
    temperature: Tensor | float = 1.0,
    one_hot: bool = True,
) -> Tensor:
    r""":math:`\hat g_{\mathrm{RR}}` from the relaxed ``endpoints`` :math:`s_k` (leading
    dim :math:`K`, each of the sample's shape) and ``value_gradient`` :math:`\nabla f(D)`.

    With ``endpoints = hard.unsqueeze(0)`` it is ReinMax's estimate
    (:func:`~pyro_discrete.estimators.reinmax_logit_gradient`).
    """
    midpoints = heun_midpoints(logits, endpoints, temperature, one_hot)
    first = _jacobian_product(midpoints, value_gradient, one_hot).mean(0)
    pi_0 = torch.softmax(logits, -1) if one_hot else torch.sigmoid(logits)
    return 2 * first - 0.5 * _jacobian_product(pi_0, value_gradient, one_hot)
