r"""ReinMax-Rao: ReinMax with a Rao-Blackwellised first term. **Biased.**

ReinMax (Liu et al. 2023, :mod:`pyro_discrete.estimators.reinmax`) estimates
:math:`\partial_\ell\,\mathbb E[f(D)]` by
:math:`\big(2J(\pi_1) - \tfrac12 J(\pi_0)\big)\nabla f(D)` with the Heun midpoint
:math:`\pi_1 = \tfrac12(\mathrm{softmax}(\ell/\lambda) + D)`, :math:`\pi_0 =
\mathrm{softmax}(\ell)` and :math:`J(p) = \mathrm{diag}(p) - pp^\top`. Its weight on a
rare sample is large, hence its variance. Two forms live here:

- **Gumbel-Rao form** (:func:`conditional_jacobian_logit_gradient`; Wang & Bui 2026,
  eq. 17, as two independent public implementations that cite the paper write it: its
  text was not reachable from this project). :math:`J(\pi_1)` is read as the Jacobian of
  a softmax at the midpoint's logits :math:`\theta_D = \log\pi_1`
  (:func:`shifted_logits`) and replaced by the Gumbel-Rao estimate (Paulus et al. 2021)
  of the Gumbel-softmax Jacobian there, given the sample:

  .. math::

      \hat g = \frac{2}{\tau K}\sum_{k=1}^K J\big(\mathrm{softmax}((\theta_D +
      \tilde G_k)/\tau)\big)\nabla f(D) - \tfrac12 J(\pi_0)\nabla f(D),
      \qquad \arg\max(\theta_D + \tilde G_k) = D.

- **Relaxed-endpoint form** (:func:`reinmax_rao_logit_gradient`; our earlier
  construction, made when only the abstract was readable). It replaces the hard endpoint
  :math:`D` of the midpoint by its relaxation :math:`s = \mathrm{softmax}(\tilde z/\tau)`
  and averages the midpoint Jacobian over :math:`K` conditional draws
  :math:`\tilde z_k \sim p(z \mid D)`:

  .. math::

      \hat g_{\mathrm{RR}} = \Big(\frac2K\sum_{k=1}^K J(\pi_{1,k})
          - \tfrac12 J(\pi_0)\Big)\nabla f(D),
      \qquad \pi_{1,k} = \tfrac12\big(\mathrm{softmax}(\ell/\lambda)
          + \mathrm{softmax}(\tilde z_k/\tau)\big).

  As :math:`\tau \to 0` it is ReinMax exactly; a larger :math:`\tau` pulls the endpoint
  towards the mean.

Both cost one evaluation of :math:`f` and its gradient, as ReinMax, plus :math:`K`
conditional Gumbel draws. A Bernoulli is the two-class case (logistic noise, elementwise).

References: L. Liu, C. Dong, X. Liu, B. Yu, J. Gao (2023), *Bridging Discrete and
Backpropagation: Straight-Through and Beyond*; M. Paulus, C. Maddison, A. Krause (2021),
*Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient Estimator*; D. Wang,
T. D. Bui (2026), *Beyond ReinMax: Low-Variance Gradient Estimators for Discrete Latent
Variables* (arXiv 2603.08257).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "conditional_jacobian_logit_gradient",
    "heun_midpoints",
    "reinmax_rao_logit_gradient",
    "shifted_logits",
]


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


def shifted_logits(
    logits: Tensor, hard: Tensor, temperature: Tensor | float = 1.0, one_hot: bool = True
) -> Tensor:
    r""":math:`\theta_D = \log\tfrac12(\mathrm{softmax}(\ell/\lambda) + D)`, the logits of
    ReinMax's Heun midpoint (for a Bernoulli, the log-odds of
    :math:`\tfrac12(\sigma(\ell/\lambda) + b)`). A category of probability 0 that was not
    drawn gets the log of the smallest positive number rather than :math:`-\infty`."""
    midpoint = heun_midpoints(logits, hard, temperature, one_hot)
    tiny = torch.finfo(midpoint.dtype).tiny
    if one_hot:
        return midpoint.clamp_min(tiny).log()
    return midpoint.clamp_min(tiny).log() - (1 - midpoint).clamp_min(tiny).log()


def conditional_jacobian_logit_gradient(
    logits: Tensor,
    relaxed: Tensor,
    value_gradient: Tensor,
    rao_temperature: Tensor | float = 1.0,
    one_hot: bool = True,
) -> Tensor:
    r"""The Gumbel-Rao form of ReinMax-Rao (Wang & Bui 2026, eq. 17, as their estimator is
    implemented in public code that cites it; the paper's text was not reachable here):

    .. math::

        \hat g = \frac{2}{\tau K}\sum_{k=1}^K J(s_k)\,\nabla f(D)
                 - \tfrac12 J(\pi_0)\,\nabla f(D),
        \qquad s_k = \mathrm{softmax}\big((\theta_D + \tilde G_k)/\tau\big),

    where :math:`\theta_D` is :func:`shifted_logits` and :math:`\tilde G_k` are Gumbel draws
    conditioned on :math:`\arg\max(\theta_D + \tilde G_k) = D`. ReinMax's first term
    :math:`2J(\pi_1)` with :math:`\pi_1 = \mathrm{softmax}(\theta_D)` is replaced by twice
    the Gumbel-Rao estimate (Paulus et al. 2021) of the Gumbel-softmax Jacobian at
    :math:`\theta_D`, :math:`\mathbb E[\partial_\theta \mathrm{softmax}((\theta + G)/\tau)
    \mid D]`. ``relaxed`` holds the :math:`s_k` stacked along a leading dim; for a
    Bernoulli everything is elementwise (:math:`J(s) = s(1-s)`, logistic noise).
    ``rao_temperature`` broadcasts against the batch shape (without the category dim).
    """
    tau = torch.as_tensor(rao_temperature, dtype=logits.dtype, device=logits.device)
    if one_hot and tau.dim():
        tau = tau.unsqueeze(-1)
    first = _jacobian_product(relaxed, value_gradient, one_hot).mean(0) / tau
    pi_0 = torch.softmax(logits, -1) if one_hot else torch.sigmoid(logits)
    return 2 * first - 0.5 * _jacobian_product(pi_0, value_gradient, one_hot)
