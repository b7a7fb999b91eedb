r"""MuProp: a first-order Taylor control variate around the mean-field pass (Gu et al., 2016).

With :math:`\bar\mu` the mean-field values (each discrete value replaced by its mean,
layer after layer) and :math:`\mu = \mathbb E_q[b]`,

.. math::

    \hat g = \big[f(b) - f(\bar\mu) - f'(\bar\mu)^\top (b - \mu)\big]\,
             \partial_\theta \log q(b) + f'(\bar\mu)^\top \partial_\theta \mu .

:math:`f(\bar\mu)` and :math:`f'(\bar\mu)` are constants here; the analytic term
differentiates only :math:`\mu`, the mean of the layer given its hard parents, so the
estimator is unbiased in every layer of a deep network.

Reference: S. Gu, S. Levine, I. Sutskever, A. Mnih (2016), *MuProp: Unbiased
Backpropagation for Stochastic Neural Networks*.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["muprop_surrogate"]


def muprop_taylor_term(slope: Tensor, value: Tensor, mean: Tensor, event_dims: int) -> Tensor:
    r"""The first-order term :math:`f'(\bar\mu)^\top (b - \mu)`, summed over the last
    ``event_dims`` dimensions (constant in :math:`\theta`)."""
    taylor = slope.detach() * (value - mean.detach())
    return taylor.sum(tuple(range(-event_dims, 0))) if event_dims else taylor


def muprop_surrogate(
    log_q: Tensor,
    signal: Tensor,
    mean_field_signal: Tensor,
    taylor: Tensor,
    slope: Tensor,
    mean: Tensor,
    baseline: Tensor | float = 0.0,
) -> tuple[Tensor, Tensor]:
    r"""Return ``(surrogate, residual)`` for one discrete site.

    ``signal`` is :math:`f(b)`, ``mean_field_signal`` :math:`f(\bar\mu)` and ``taylor``
    the first-order term (see :func:`muprop_taylor_term`), all shaped like ``log_q``'s
    batch; ``slope`` (:math:`f'(\bar\mu)`) and ``mean`` (:math:`\mu`, with its
    :math:`\theta`-graph) have the site's full shape. ``residual`` is the centred signal,
    for the caller's running baseline.
    """
    residual = (signal - mean_field_signal - taylor).detach()
    analytic = (slope.detach() * mean).sum()
    return ((residual - baseline).detach() * log_q).sum() + analytic, residual
