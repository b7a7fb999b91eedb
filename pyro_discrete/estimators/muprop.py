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


def muprop_surrogate(
    log_q: Tensor,
    signal: Tensor,
    value: Tensor,
    mean: Tensor,
    mean_field_signal: Tensor,
    mean_field_slope: Tensor,
    event_dims: int,
    baseline: Tensor | float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Return ``(surrogate, residual)`` for one discrete site.

    ``value`` and ``mean`` have the site's full shape (batch + event); ``mean_field_slope``
    is :math:`f'(\\bar\\mu)` with that shape; ``signal``, ``mean_field_signal`` and
    ``log_q`` have the batch shape. ``event_dims`` is the number of trailing dimensions that
    the Taylor term sums over. ``residual`` is the centred signal (for baselines).
    """
    slope = mean_field_slope.detach()
    taylor = slope * (value - mean.detach())
    if event_dims:
        taylor = taylor.sum(tuple(range(-event_dims, 0)))
    residual = signal.detach() - mean_field_signal.detach() - taylor
    analytic = (slope * mean).sum()
    return ((residual - baseline).detach() * log_q).sum() + analytic, residual
