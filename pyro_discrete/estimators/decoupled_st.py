r"""Decoupled straight-through: one temperature for the sample, another for the gradient.
**Biased.**

Straight-through Gumbel-softmax ties two choices to one temperature. Decoupled
straight-through (Shah, Yan, Mozer, Liu 2024) separates them: a forward temperature
:math:`\tau_f` that sets how random the hard sample is (exploration), and a backward
temperature :math:`\tau_b` that sets how the gradient spreads over the categories. Our
reading of the paper's abstract and introduction (v1 and v2; its method section was not
reachable from this project, so no formula below is quoted from it; ``docs/choosing.md``
lists what was tried): the hard sample is that of the tempered law,

.. math::

    z = \ell/\tau_f + g, \qquad D = \mathrm{onehot}(\arg\max z)
    \sim \mathrm{Categorical}(\mathrm{softmax}(\ell/\tau_f)),

with :math:`g` standard Gumbel noise (logistic noise and :math:`D = 1[z > 0]` for a
Bernoulli), and the backward pass differentiates the relaxation of the same noise at
:math:`\tau_b`:

.. math::

    \hat g = \frac{\partial\,\mathrm{softmax}(z/\tau_b)}{\partial\ell}^{\!\top}\nabla f(D)
           = \frac{1}{\tau_f\tau_b}\,J\big(\mathrm{softmax}(z/\tau_b)\big)\,\nabla f(D),
    \qquad J(p) = \mathrm{diag}(p) - pp^\top.

At :math:`\tau_f = 1` it is straight-through Gumbel-softmax at temperature :math:`\tau_b`,
exactly; for :math:`\tau_f \ne 1` it is straight-through of the tempered law at
:math:`\tau_b` (so the sample no longer follows :math:`\mathrm{softmax}(\ell)`). One
evaluation of :math:`f` and its gradient, as straight-through.

Reference: R. Shah, M. Yan, M. C. Mozer, D. Liu (2024), *Improving Discrete Optimisation
Via Decoupled Straight-Through Gumbel-Softmax* (arXiv 2410.13331; v2: *... Decoupled
Straight-Through Estimator*).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["decoupled_st_logit_gradient"]


def decoupled_st_logit_gradient(
    logits: Tensor,
    noise: Tensor,
    value_gradient: Tensor,
    forward_temperature: float = 1.0,
    backward_temperature: Tensor | float = 1.0,
    one_hot: bool = True,
) -> Tensor:
    r"""The decoupled straight-through estimate of :math:`\partial_\ell\,\mathbb E[f(D)]`.

    ``noise`` is the Gumbel (``one_hot``) or logistic noise :math:`g` of the sample, so that
    :math:`z = \ell/\tau_f + g`; ``value_gradient`` is :math:`\nabla f(D)`. Without
    ``one_hot`` everything is elementwise (Bernoulli logits and 0/1 samples).
    ``backward_temperature`` broadcasts against the batch shape (without the category dim).
    """
    tau_b = torch.as_tensor(backward_temperature, dtype=logits.dtype, device=logits.device)
    z = logits / forward_temperature + noise
    if one_hot:
        if tau_b.dim():
            tau_b = tau_b.unsqueeze(-1)
        p = torch.softmax(z / tau_b, -1)
        jvp = p * value_gradient - p * (p * value_gradient).sum(-1, keepdim=True)
    else:
        p = torch.sigmoid(z / tau_b)
        jvp = p * (1 - p) * value_gradient
    return jvp / (forward_temperature * tau_b)
