"""VIMCO's leave-one-out baselines in O(K) equal the K x K log-sum-exp of the paper's
formula (issue 22: no K x K matrix for many particles)."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_discrete import estimators as E


def pairwise_signals(log_w: torch.Tensor, dim: int) -> torch.Tensor:
    """The reference: row i of a K x K matrix holds the log-weights with log w_i replaced
    by the mean of the others."""
    k = log_w.shape[dim]
    lw = log_w.movedim(dim, -1)
    bound = torch.logsumexp(lw, -1, keepdim=True) - math.log(k)
    others_mean = (lw.sum(-1, keepdim=True) - lw) / (k - 1)
    mat = lw.unsqueeze(-2).expand(*lw.shape[:-1], k, k).clone()
    idx = torch.arange(k)
    mat[..., idx, idx] = others_mean
    baseline = torch.logsumexp(mat, -1) - math.log(k)
    return (bound - baseline).movedim(-1, dim)


CASES = {
    "ordinary": lambda g: torch.randn(3, 7, 2, generator=g, dtype=torch.float64) * 3,
    "two samples": lambda g: torch.randn(5, 2, generator=g, dtype=torch.float64),
    # one weight dominates by e^1000: the others' sum must not cancel against it
    "dominant weight": lambda g: torch.tensor([[1000.0, 0.0, -1.0, 2.0]], dtype=torch.float64),
    "tied largest": lambda g: torch.tensor([[5.0, 5.0, -3.0]], dtype=torch.float64),
    "spread of 1e4": lambda g: torch.linspace(-5000, 5000, 9, dtype=torch.float64).view(1, 9),
    "zero weights": lambda g: torch.tensor([[-math.inf, 0.5, -2.0]], dtype=torch.float64),
    "float32": lambda g: torch.randn(4, 50, generator=g) * 20,
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dim", [-1, 0])
def test_linear_signals_equal_the_pairwise_matrix(case, dim):
    log_w = CASES[case](torch.Generator().manual_seed(0))
    if dim == 0:
        log_w = log_w.movedim(-1, 0).contiguous()
    bound, signals = E.vimco_bound_and_signals(log_w, dim)
    expected = pairwise_signals(log_w, dim)
    tol = (
        dict(rtol=1e-5, atol=1e-5) if log_w.dtype == torch.float32 else dict(rtol=1e-12, atol=1e-9)
    )
    torch.testing.assert_close(signals, expected, equal_nan=True, **tol)
    torch.testing.assert_close(
        bound, torch.logsumexp(log_w, dim, keepdim=True) - math.log(log_w.shape[dim])
    )


def test_many_particles_take_linear_memory():
    """K = 100,000 particles: the K x K matrix would hold 10^10 doubles (80 GB)."""
    log_w = torch.randn(100_000, dtype=torch.float64)
    _, signals = E.vimco_bound_and_signals(log_w, 0)
    assert signals.shape == (100_000,) and torch.isfinite(signals).all()
    # spot-check three samples against the definition
    k = log_w.numel()
    for i in (0, 12_345, k - 1):
        others = torch.cat([log_w[:i], log_w[i + 1 :]])
        replaced = torch.cat([others, others.mean().view(1)])
        expected = (torch.logsumexp(log_w, 0) - torch.logsumexp(replaced, 0)).item()
        assert signals[i].item() == pytest.approx(expected, abs=1e-9)
