r"""Pure tensor functions behind the relaxations.

Everything here maps uniform noise and logits to samples (or samples back to noise), so the
distributions in :mod:`pyro_discrete.distributions` and the estimators in
:mod:`pyro_discrete.estimators` share one implementation. All functions are computed in
log-space so that logits up to :math:`|30|` give finite samples and gradients in float32.

Notation: :math:`\theta = \sigma(\ell)` for a Bernoulli with logit :math:`\ell`;
:math:`\theta_k = \mathrm{softmax}(\ell)_k` for a categorical.

References:

- G. Tucker, A. Mnih, C. Maddison, D. Lawson, J. Sohl-Dickstein (2017),
  *REBAR: Low-variance, unbiased gradient estimates for discrete latent variable models*.
- C. Maddison, A. Mnih, Y. W. Teh (2017), *The Concrete Distribution*.
- E. Jang, S. Gu, B. Poole (2017), *Categorical Reparameterization with Gumbel-Softmax*.
- L. Liu, C. Dong, X. Liu, B. Yu, J. Gao (2023), *Bridging Discrete and Backpropagation:
  Straight-Through and Beyond* (ReinMax).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "clamp_probs",
    "uniform_like",
    "logistic_sample",
    "logistic_conditional_sample",
    "logistic_conditional_noise",
    "gumbel_sample",
    "gumbel_conditional_sample",
    "gumbel_conditional_noise",
    "heaviside",
    "onehot_argmax",
    "relax_bernoulli",
    "relax_categorical",
    "bernoulli_log_mass",
    "categorical_log_mass",
    "reinmax_bernoulli",
    "reinmax_categorical",
]


def clamp_probs(u: Tensor) -> Tensor:
    """Clamp uniform noise into the open interval (0, 1) at the dtype's resolution."""
    eps = torch.finfo(u.dtype).eps
    return u.clamp(min=eps, max=1 - eps)


def uniform_like(x: Tensor, shape: torch.Size | None = None) -> Tensor:
    """Uniform(0, 1) noise with ``x``'s dtype and device, safely inside (0, 1)."""
    shape = x.shape if shape is None else shape
    return clamp_probs(torch.rand(shape, dtype=x.dtype, device=x.device))


def _log1mexp(x: Tensor) -> Tensor:
    # log(1 - exp(x)) for x < 0, accurate on both sides of -log 2.
    return torch.where(
        x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x))
    )


# ---------------------------------------------------------------------------------------
# Bernoulli: z = logit(theta) + Logistic(0, 1), b = H(z) = 1[z > 0]
# ---------------------------------------------------------------------------------------


def logistic_sample(logits: Tensor, u: Tensor) -> Tensor:
    r"""Reparameterised logistic sample :math:`z = \ell + \log u - \log(1 - u)`.

    :math:`H(z) \sim \mathrm{Bernoulli}(\sigma(\ell))`.
    """
    return logits + torch.log(u) - torch.log1p(-u)


def logistic_conditional_sample(logits: Tensor, outcome: Tensor, v: Tensor) -> Tensor:
    r"""Sample :math:`\tilde z \sim p(z \mid H(z) = b)`, reparameterised in the logits.

    With :math:`v \sim U(0, 1)`: :math:`v' = v (1 - \theta)` if :math:`b = 0`, and
    :math:`v' = v \theta + (1 - \theta)` if :math:`b = 1`; then
    :math:`\tilde z = \ell + \log v' - \log(1 - v')`, evaluated as
    :math:`\tilde z = \log(1 + v e^{\ell}) - \log(1 - v)` (:math:`b = 1`) and
    :math:`\tilde z = \log v - \log(1 + (1 - v) e^{-\ell})` (:math:`b = 0`), whose sign is
    exact in floating point, so :math:`H(\tilde z) = b` for every ``v`` in (0, 1).
    """
    # Algebraically z~ = logit(theta) + log v' - log(1 - v') simplifies to a sum of two terms
    # of the same sign: logit(theta) no longer appears as a separate addend, so a large |logit|
    # cannot cancel a small positive/negative remainder to exactly 0 (which happened for
    # v near 0 with logit -10 in float32 and float64, giving H(z~) = 0 with b = 1).
    #   b = 1: z~ = log(1 + v e^l) - log(1 - v)                   > 0 for v in (0, 1)
    #   b = 0: z~ = log v - log(1 + (1 - v) e^-l)                 < 0 for v in (0, 1)
    log_v = torch.log(v)
    log_1m_v = torch.log1p(-v)
    z_one = F.softplus(logits + log_v) - log_1m_v
    z_zero = log_v - F.softplus(log_1m_v - logits)
    return torch.where(outcome > 0.5, z_one, z_zero)


def logistic_conditional_noise(logits: Tensor, z: Tensor, outcome: Tensor) -> Tensor:
    r"""The noise :math:`v` for which :func:`logistic_conditional_sample` returns ``z``.

    REBAR's official code re-uses the noise of :math:`z` for :math:`\tilde z`: with this
    :math:`v` (detached), :math:`\tilde z` equals :math:`z` numerically but carries the
    conditional reparameterisation gradient. ``outcome`` must equal :math:`H(z)`.
    """
    with torch.no_grad():
        # u = sigma(z - logits) is the uniform that produced z.
        log_u = F.logsigmoid(z - logits)
        log_1m_u = F.logsigmoid(logits - z)
        log_theta = F.logsigmoid(logits)
        log_1m_theta = F.logsigmoid(-logits)
        # b = 1: v = (u - (1 - theta)) / theta = 1 - (1 - u) / theta
        v1 = -torch.expm1(log_1m_u - log_theta)
        # b = 0: v = u / (1 - theta)
        v0 = torch.exp(log_u - log_1m_theta)
        v = torch.where(outcome > 0.5, v1, v0)
        return clamp_probs(v)


def heaviside(z: Tensor) -> Tensor:
    """The hard threshold :math:`H(z) = 1[z > 0]` in ``z``'s dtype."""
    return (z > 0).to(z.dtype)


def relax_bernoulli(z: Tensor, temperature: Tensor | float) -> Tensor:
    r"""The relaxed Bernoulli value :math:`\sigma(z / \lambda)`."""
    return torch.sigmoid(z / temperature)


def bernoulli_log_mass(logits: Tensor, value: Tensor) -> Tensor:
    r"""Continuous extension of the Bernoulli log-mass, elementwise:
    :math:`v \log\theta + (1 - v)\log(1 - \theta)`.

    Equal to ``Bernoulli(logits).log_prob(value)`` at 0/1 and differentiable in ``value``,
    so that a model can be evaluated at relaxed values.
    """
    return value * F.logsigmoid(logits) + (1 - value) * F.logsigmoid(-logits)


# ---------------------------------------------------------------------------------------
# Categorical: z_k = log theta_k + Gumbel(0, 1), b = onehot(argmax z)
# ---------------------------------------------------------------------------------------


def gumbel_sample(logits: Tensor, u: Tensor) -> Tensor:
    r"""Reparameterised Gumbel sample :math:`z_k = \log\theta_k - \log(-\log u_k)`.

    ``logits`` need not be normalised; :math:`\log\theta` is ``log_softmax(logits)`` so that
    :math:`\max_k z_k` is a standard Gumbel variable independent of the argmax.
    """
    return torch.log_softmax(logits, dim=-1) - torch.log(-torch.log(u))


def gumbel_conditional_sample(logits: Tensor, outcome: Tensor, v: Tensor) -> Tensor:
    r"""Sample :math:`\tilde z \sim p(z \mid \arg\max z = b)` for a one-hot ``outcome``.

    :math:`\tilde z_b = -\log(-\log v_b)` and, for :math:`i \ne b`,
    :math:`\tilde z_i = -\log(-\log(v_i)/\theta_i - \log v_b)` (a Gumbel truncated below
    :math:`\tilde z_b`), computed with a log-sum-exp so that tiny :math:`\theta_i` stay
    finite. Entries that round to :math:`\tilde z_b` are put one ulp below it, so
    :math:`\arg\max \tilde z = b` exactly.
    """
    log_theta = torch.log_softmax(logits, dim=-1)
    log_neg_log_v = torch.log(-torch.log(v))
    top = (log_neg_log_v * outcome).sum(-1, keepdim=True)  # log(-log v_b)
    others = -torch.logaddexp(log_neg_log_v - log_theta, top)
    # When z~_b - z~_i falls below the resolution of z~_b, z~_i rounds to z~_b and the tie
    # hands the argmax to the lower index (seen with v_i near 1 and a large theta_i). Move
    # such values one ulp below z~_b; the straight-through term keeps their exact gradient.
    below = torch.nextafter(-top, torch.full_like(top, -float("inf")))
    others = torch.where(others < -top, others, others + (below - others).detach())
    return torch.where(outcome > 0.5, -top, others)


def gumbel_conditional_noise(logits: Tensor, z: Tensor, outcome: Tensor) -> Tensor:
    r"""The noise :math:`v` for which :func:`gumbel_conditional_sample` returns ``z``.

    :math:`v_b = \exp(-e^{-z_b})`, :math:`v_i = \exp(-\theta_i (e^{-z_i} - e^{-z_b}))`.
    ``outcome`` must be the one-hot argmax of ``z`` (with ``z`` from :func:`gumbel_sample`
    of the same logits).
    """
    with torch.no_grad():
        log_theta = torch.log_softmax(logits, dim=-1)
        z_top = (z * outcome).sum(-1, keepdim=True)
        # e^{-z_i} - e^{-z_b} = e^{-z_i} (1 - e^{z_i - z_b}); z_i < z_b for i != b
        gap = (z - z_top).clamp(max=-torch.finfo(z.dtype).tiny)
        log_rate = log_theta - z + _log1mexp(gap)
        v_others = torch.exp(-torch.exp(log_rate))
        v_top = torch.exp(-torch.exp(-z_top)).expand_as(z)
        return clamp_probs(torch.where(outcome > 0.5, v_top, v_others))


def onehot_argmax(z: Tensor) -> Tensor:
    """The one-hot vector of :math:`\\arg\\max_k z_k` in ``z``'s dtype."""
    # A comparison, not F.one_hot: on the CPU one_hot checks the index range by reading
    # min/max to the host (aten._local_scalar_dense), which a traced step cannot do.
    classes = torch.arange(z.shape[-1], device=z.device)
    return (z.argmax(-1, keepdim=True) == classes).to(z.dtype)


def relax_categorical(z: Tensor, temperature: Tensor | float) -> Tensor:
    r"""The relaxed one-hot value :math:`\mathrm{softmax}(z / \lambda)`."""
    return torch.softmax(z / temperature, dim=-1)


def categorical_log_mass(logits: Tensor, value: Tensor) -> Tensor:
    r"""Continuous extension of the one-hot categorical log-mass:
    :math:`\sum_k v_k \log\theta_k`.

    torch's ``OneHotCategorical.log_prob`` takes an argmax of the value and so has no
    gradient in it; this one does.
    """
    return (value * torch.log_softmax(logits, dim=-1)).sum(-1)


# ---------------------------------------------------------------------------------------
# ReinMax (Liu et al. 2023): the hard sample with a second-order straight-through gradient
# ---------------------------------------------------------------------------------------


def reinmax_categorical(logits: Tensor, hard: Tensor, temperature: Tensor | float) -> Tensor:
    r"""The one-hot ``hard`` sample in the forward pass, ReinMax's gradient in the backward.

    With :math:`\pi_0 = \mathrm{softmax}(\ell)`,
    :math:`\pi_1 = \tfrac12(\mathrm{softmax}(\ell/\lambda) + D)` and
    :math:`J(p) = \mathrm{diag}(p) - p p^\top` (the softmax Jacobian at :math:`p`):

    .. math:: \frac{\partial\,\mathrm{value}}{\partial \ell}
              = 2\,J(\pi_1) - \tfrac12\,J(\pi_0),

    the Heun (trapezoid) correction of straight-through's :math:`J(\pi_0)`. It is built as
    ``hard + (s - s.detach())`` with :math:`s = 2\,J(\pi_1)\,\ell - \tfrac12\pi_0`,
    :math:`\pi_1` held constant (so the temperature gets no gradient, as in the official
    code), hence the value is exactly ``hard``. ``hard`` must be a one-hot sample of
    :math:`\mathrm{softmax}(\ell)`, not of the tempered distribution.
    """
    pi_0 = torch.softmax(logits, dim=-1)
    with torch.no_grad():
        pi_1 = 0.5 * (torch.softmax(logits / temperature, dim=-1) + hard)
    # J(pi_1) l = pi_1 * l - pi_1 (pi_1 . l); J is symmetric, so its transpose is itself.
    linear = pi_1 * logits - pi_1 * (pi_1 * logits).sum(-1, keepdim=True)
    soft = 2 * linear - 0.5 * pi_0
    return hard + (soft - soft.detach())


def reinmax_bernoulli(logits: Tensor, hard: Tensor, temperature: Tensor | float) -> Tensor:
    r"""ReinMax for a Bernoulli: the two-class categorical with logits :math:`(0, \ell)`.

    Forward: ``hard`` (exactly 0/1). Backward, with :math:`\pi_0 = \sigma(\ell)` and
    :math:`\pi_1 = \tfrac12(\sigma(\ell/\lambda) + b)`:

    .. math:: \frac{\partial\,\mathrm{value}}{\partial \ell}
              = 2\,\pi_1(1 - \pi_1) - \tfrac12\,\pi_0(1 - \pi_0),

    which is :func:`reinmax_categorical`'s gradient of the second coordinate of
    :math:`(1 - b, b)` with respect to :math:`\ell` when only :math:`b` is used downstream.
    """
    with torch.no_grad():
        pi_1 = 0.5 * (torch.sigmoid(logits / temperature) + hard)
    soft = 2 * pi_1 * (1 - pi_1) * logits - 0.5 * torch.sigmoid(logits)
    return hard + (soft - soft.detach())
