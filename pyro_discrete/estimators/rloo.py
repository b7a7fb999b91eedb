r"""RLOO: REINFORCE with the leave-one-out baseline (Kool, van Hoof, Welling, 2019).

With :math:`K \ge 2` independent samples :math:`b_1, \dots, b_K`,

.. math::

    \hat g = \frac 1K \sum_i \Big(f_i - \frac{1}{K-1}\sum_{j \ne i} f_j\Big)
             \partial_\theta \log q(b_i).

Reference: W. Kool, H. van Hoof, M. Welling (2019), *Buy 4 REINFORCE Samples, Get a
Baseline for Free!*
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["leave_one_out_signal"]


def leave_one_out_signal(signal: Tensor, dim: int) -> Tensor:
    """``f_i`` minus the mean of the other samples along ``dim`` (detached)."""
    k = signal.shape[dim]
    if k < 2:
        raise ValueError(f"RLOO needs at least 2 samples along dim {dim}, got {k}")
    signal = signal.detach()
    total = signal.sum(dim, keepdim=True)
    return signal - (total - signal) / (k - 1)
