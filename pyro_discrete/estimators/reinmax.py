r"""ReinMax: a second-order (Heun) correction of straight-through (Liu et al., 2023). **Biased.**

Straight-through replaces the intractable :math:`\partial_\ell \mathbb E_D[f(D)]` by
:math:`J(\pi_0)\,\nabla f(D)` with :math:`\pi_0 = \mathrm{softmax}(\ell)`,
:math:`J(p) = \mathrm{diag}(p) - pp^\top` and :math:`D` the one-hot sample: a forward-Euler
(first-order) approximation of :math:`f(I_i) - f(I_j)`. ReinMax uses Heun's method (the
trapezoid rule) instead; with :math:`\pi_1 = \tfrac12(\mathrm{softmax}(\ell/\lambda) + D)`,

.. math::

    \hat g_{\mathrm{ReinMax}} = 2\,J(\pi_1)\,\nabla f(D) - \tfrac12\,J(\pi_0)\,\nabla f(D),

at the cost of straight-through (one evaluation of :math:`f` and its gradient). At
:math:`\lambda = 1` the trapezoid rule is exact for :math:`f` quadratic in :math:`D`, so
:math:`\mathbb E[\hat g_{\mathrm{ReinMax}}]` is then the exact gradient (straight-through's
is not); for other :math:`f` and :math:`\lambda` it is biased. The paper prefers
:math:`\lambda \ge 1` (the official code refuses :math:`\lambda < 1`). A Bernoulli is the
two-class case with logits :math:`(0, \ell)`.

The value whose backward pass is this gradient (the hard sample in the forward pass) lives
in :func:`pyro_discrete.distributions.functional.reinmax_categorical` /
:func:`~pyro_discrete.distributions.functional.reinmax_bernoulli`; this module gives the
gradient in closed form, as the official ``ReinMaxCore.backward`` computes it.

Reference: L. Liu, C. Dong, X. Liu, B. Yu, J. Gao (2023), *Bridging Discrete and
Backpropagation: Straight-Through and Beyond*, NeurIPS (arXiv 2304.08612); official code
``microsoft/ReinMax``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["reinmax_logit_gradient"]


def _softmax_jacobian_product(p: Tensor, g: Tensor) -> Tensor:
    # J(p) g = p * g - p (p . g), J(p) = diag(p) - p p^T
    return p * g - p * (p * g).sum(-1, keepdim=True)


def reinmax_logit_gradient(
    logits: Tensor,
    hard: Tensor,
    value_gradient: Tensor,
    temperature: Tensor | float = 1.0,
    one_hot: bool = True,
) -> Tensor:
    r"""ReinMax's estimate of :math:`\partial_\ell \mathbb E[f(D)]` given
    ``value_gradient`` :math:`= \nabla f(D)` at the sample ``hard`` :math:`= D`.

    ``one_hot``: ``logits`` / ``hard`` / ``value_gradient`` have a trailing category dim;
    otherwise they are Bernoulli logits, 0/1 samples and :math:`\partial f / \partial b`,
    elementwise. ``temperature`` broadcasts against the batch shape (without the category
    dim).
    """
    temperature = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
    if one_hot:
        if temperature.dim():
            temperature = temperature.unsqueeze(-1)
        pi_0 = torch.softmax(logits, -1)
        pi_1 = 0.5 * (torch.softmax(logits / temperature, -1) + hard)
        return 2 * _softmax_jacobian_product(pi_1, value_gradient) - 0.5 * (
            _softmax_jacobian_product(pi_0, value_gradient)
        )
    pi_0 = torch.sigmoid(logits)
    pi_1 = 0.5 * (torch.sigmoid(logits / temperature) + hard)
    return (2 * pi_1 * (1 - pi_1) - 0.5 * pi_0 * (1 - pi_0)) * value_gradient
