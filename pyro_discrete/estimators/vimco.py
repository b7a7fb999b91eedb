r"""VIMCO: the multi-sample (IWAE) bound with per-sample baselines (Mnih & Rezende, 2016).

With log-weights :math:`\log w_j = \log p(x, b_j) - \log q(b_j)`, :math:`j = 1..K`,
the bound is :math:`\hat L = \log \frac 1K \sum_j w_j` and the learning signal of sample
:math:`i` replaces :math:`w_i` by the geometric mean of the others:

.. math::

    \hat L(b_i \mid b_{-i}) = \hat L - \log \frac 1K \Big[\sum_{j \ne i} w_j
        + \exp\Big(\frac{1}{K-1}\sum_{k \ne i} \log w_k\Big)\Big].

The surrogate is :math:`\hat L + \sum_i \mathrm{sg}[\hat L(b_i \mid b_{-i})] \log q(b_i)`;
everything is computed in log-space.

Reference: A. Mnih, D. J. Rezende (2016), *Variational Inference for Monte Carlo
Objectives*.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["vimco_bound_and_signals", "vimco_surrogate"]


def vimco_bound_and_signals(log_w: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Return ``(bound, signals)``: :math:`\\hat L` (keepdim along ``dim``) and the detached
    per-sample learning signals :math:`\\hat L(b_i \\mid b_{-i})`."""
    k = log_w.shape[dim]
    if k < 2:
        raise ValueError(f"VIMCO needs at least 2 samples along dim {dim}, got {k}")
    log_k = math.log(k)
    bound = torch.logsumexp(log_w, dim, keepdim=True) - log_k
    with torch.no_grad():
        lw = log_w.detach()
        others_mean = (lw.sum(dim, keepdim=True) - lw) / (k - 1)
        # Row i of a K x K matrix holds the log-weights with log w_i replaced by the mean
        # of the others; a log-sum-exp over each row stays in log space.
        moved = lw.movedim(dim, -1)  # (..., K)
        om = others_mean.movedim(dim, -1)  # (..., K)
        mat = moved.unsqueeze(-2).expand(*moved.shape[:-1], k, k).clone()  # row i
        idx = torch.arange(k, device=lw.device)
        mat[..., idx, idx] = om
        baseline = torch.logsumexp(mat, -1) - log_k  # (..., K)
        signals = (bound.detach().movedim(dim, -1) - baseline).movedim(-1, dim)
    return bound, signals


def vimco_surrogate(log_w: Tensor, log_q: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Return ``(surrogate, bound)``: the surrogate objective (summed) and the bound
    (keepdim along ``dim``). ``log_q`` is the discrete part of the guide's log-probability
    of each sample, shaped like ``log_w``."""
    bound, signals = vimco_bound_and_signals(log_w, dim)
    return bound.sum() + (signals * log_q).sum(), bound
