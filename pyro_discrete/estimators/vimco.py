r"""VIMCO: the multi-sample (IWAE) bound with per-sample baselines (Mnih & Rezende, 2016).

With log-weights :math:`\log w_j = \log p(x, b_j) - \log q(b_j)`, :math:`j = 1..K`,
the bound is :math:`\hat L = \log \frac 1K \sum_j w_j` and the learning signal of sample
:math:`i` replaces :math:`w_i` by the geometric mean of the others:

.. math::

    \hat L(b_i \mid b_{-i}) = \hat L - \log \frac 1K \Big[\sum_{j \ne i} w_j
        + \exp\Big(\frac{1}{K-1}\sum_{k \ne i} \log w_k\Big)\Big].

The surrogate is :math:`\hat L + \sum_i \mathrm{sg}[\hat L(b_i \mid b_{-i})] \log q(b_i)`;
everything is computed in log-space, in :math:`O(K)` memory and time (the leave-one-out
sums come from one total; no :math:`K \times K` matrix is built).

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
        lw = log_w.detach().movedim(dim, -1)  # (..., K)
        others_mean = (lw.sum(-1, keepdim=True) - lw) / (k - 1)
        baseline = torch.logaddexp(_log_sum_exp_of_others(lw), others_mean) - log_k
        signals = (bound.detach().movedim(dim, -1) - baseline).movedim(-1, dim)
    return bound, signals


def _log_sum_exp_of_others(lw: Tensor) -> Tensor:
    r""":math:`\log \sum_{j \ne i} w_j` for every :math:`i` along the last dim, in
    :math:`O(K)`: the sum of all weights minus the own one, scaled by the largest weight;
    for the largest itself (where that difference could cancel) the others are summed
    afresh, scaled by the second largest."""
    top2, where = lw.topk(2, dim=-1)
    top = top2[..., :1]
    # every weight zero (log w = -inf): keep the arithmetic finite, the result is -inf
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    scaled = (lw - shift).exp()
    # >= the largest's own term (1) for every other i: no cancellation
    rest = (scaled.sum(-1, keepdim=True) - scaled).clamp(min=0).log() + shift
    is_top = torch.zeros_like(lw, dtype=torch.bool).scatter_(-1, where[..., :1], True)
    second = top2[..., 1:]
    second_shift = torch.where(torch.isfinite(second), second, torch.zeros_like(second))
    without_top = torch.where(is_top, torch.full_like(lw, -math.inf), lw)
    for_top = (without_top - second_shift).exp().sum(-1, keepdim=True).log() + second_shift
    return torch.where(is_top, for_top, rest)


def vimco_surrogate(log_w: Tensor, log_q: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Return ``(surrogate, bound)``: the surrogate objective (summed) and the bound
    (keepdim along ``dim``). ``log_q`` is the discrete part of the guide's log-probability
    of each sample, shaped like ``log_w``."""
    bound, signals = vimco_bound_and_signals(log_w, dim)
    return bound.sum() + (signals * log_q).sum(), bound
