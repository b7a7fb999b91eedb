r"""NVIL: neural variational inference and learning (Mnih & Gregor, 2014).

The learning signal of a discrete layer is centred by an input-dependent baseline
:math:`c_\psi(x)` and a running mean :math:`m`, and normalised by a running standard
deviation :math:`\sqrt v`:

.. math::

    \hat g = \frac{f(b) - c_\psi(x) - m}{\max(1, \sqrt{v})}\,
             \partial_\theta \log q(b \mid x),

where :math:`m, v` are exponential moving averages (rate :math:`\alpha`, 0.8 in the paper)
of the mean and variance of :math:`f - c_\psi(x)`, and :math:`c_\psi` is fitted by
minimising :math:`(f - m - c_\psi(x))^2`. Dividing by a positive number that does not
depend on :math:`b` rescales the step but keeps the direction's expectation.

Reference: A. Mnih, K. Gregor (2014), *Neural Variational Inference and Learning in
Belief Networks*.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["nvil_signal", "nvil_update_statistics", "nvil_baseline_loss"]


def nvil_signal(signal: Tensor, net_baseline: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """The centred and normalised learning signal (detached)."""
    centred = signal.detach() - net_baseline.detach() - mean
    return centred / var.clamp(min=1.0).sqrt()


def nvil_update_statistics(
    mean: Tensor, var: Tensor, signal: Tensor, net_baseline: Tensor, alpha: float
) -> tuple[Tensor, Tensor]:
    """New running mean and variance of ``signal - net_baseline`` (all elements pooled)."""
    with torch.no_grad():
        residual = signal - net_baseline
        new_mean = alpha * mean + (1 - alpha) * residual.mean()
        new_var = alpha * var + (1 - alpha) * (residual - new_mean).pow(2).mean()
    return new_mean, new_var


def nvil_baseline_loss(signal: Tensor, net_baseline: Tensor, mean: Tensor) -> Tensor:
    r"""Squared error fitting :math:`c_\psi(x)` to :math:`f - m` (gradient to :math:`\psi` only)."""
    return (signal.detach() - mean - net_baseline).pow(2).sum()
