"""Shared tolerances and Monte-Carlo assertions for the distribution tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

DTYPES = [torch.float32, torch.float64]
EXTREME_LOGITS = [-30.0, -10.0, -1.0, 0.0, 1.0, 10.0, 30.0]
# Fixed seeds make every Monte-Carlo test deterministic; thresholds below are set so that a
# correct implementation passes with any seed except with probability ~1e-6 (5 sigma) or
# 1e-3 (KS p-values), while the bugs they target fail by a wide margin.
NUM_DRAWS = 100_000
KS_THRESHOLD = 1e-3
GOF_THRESHOLD = 1e-3


def assert_frequencies(hits: Tensor, probs: Tensor, sigmas: float = 5.0) -> None:
    """``hits`` (draws along dim 0) have frequencies ``probs`` within ``sigmas`` standard
    errors."""
    n = hits.shape[0]
    freq = hits.double().mean(0)
    probs = probs.double()
    tol = sigmas * (probs * (1 - probs) / n).sqrt() + 1e-12
    assert ((freq - probs).abs() <= tol).all(), (freq, probs, tol)


def assert_mean_close(samples: Tensor, expected: Tensor | float, sigmas: float = 5.0) -> None:
    """The mean of ``samples`` along dim 0 is within ``sigmas`` standard errors of
    ``expected``."""
    samples = samples.double()
    mean = samples.mean(0)
    se = samples.std(0) / samples.shape[0] ** 0.5
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert ((mean - expected).abs() <= sigmas * se + 1e-12).all(), (mean, expected, se)


def density_goodness_of_fit(samples: Tensor, probs: Tensor) -> float:
    """p-value for "``probs`` is the density of the 1-D distribution that drew ``samples``".

    The transformation of :func:`pyro.distributions.testing.gof.density_goodness_of_fit`
    (density times the gap between sorted neighbours is approximately Exponential(1), so
    exp(-x) is Uniform(0, 1)) followed by a binned chi-squared test whose p-value comes from
    scipy: Pyro's own ``chi2sf`` returns 1.0 for large statistics (``chi2sf(1000, 30) ==
    1.0``), so with it a density off by a factor 1.2 passes. 1-D only: Pyro's
    nearest-neighbour version for vectors gave p < 0.01 in a quarter of seeds for a correct
    2-D Gumbel density, see :func:`histogram_2d_pvalue` instead.
    """
    from scipy import stats

    assert samples.dim() == 1
    samples = samples.detach().double()
    probs = probs.detach().double()
    n = samples.shape[0]
    order = samples.argsort()
    x, p = samples[order], probs[order]
    sparsity = 0.5 * (1 / p[1:] + 1 / p[:-1])
    exp_samples = n / sparsity * (x[1:] - x[:-1])
    unif = torch.exp(-exp_samples).numpy()
    bins = int(round(len(unif) ** (1 / 3)))
    counts = np.histogram(unif, bins=bins, range=(0.0, 1.0))[0]
    return float(stats.chisquare(counts).pvalue)


# With common random numbers a Monte-Carlo estimate is a deterministic smooth function of
# the parameters, so finite differences match its gradient to O(h^2) at any sample size.
FD_DRAWS = 4_000


def assert_gradient_matches_finite_differences(objective, logits: Tensor, dtype) -> None:
    """The autograd gradient of ``objective(logits.to(dtype))`` (a scalar computed with
    common random numbers) equals its central finite differences in float64 steps."""
    param = logits.clone().to(dtype).requires_grad_()
    (grad,) = torch.autograd.grad(objective(param), param)
    h = 1e-5 if dtype == torch.float64 else 1e-2
    steps = torch.eye(logits.numel(), dtype=torch.float64).reshape(-1, *logits.shape)
    fd = torch.stack(
        [
            (objective((logits + h * e).to(dtype)) - objective((logits - h * e).to(dtype))).double()
            / (2 * h)
            for e in steps
        ]
    ).reshape(logits.shape)
    tol = 1e-6 if dtype == torch.float64 else 2e-3
    torch.testing.assert_close(grad.double(), fd, rtol=tol, atol=tol)


def histogram_2d_pvalue(
    samples: Tensor,
    log_density,
    lo: tuple[float, float],
    hi: tuple[float, float],
    bins: int = 20,
    sub: int = 8,
) -> float:
    """Chi-squared p-value of a 2-D histogram of ``samples`` (N, 2) against the bin masses of
    ``exp(log_density)``, integrated by the midpoint rule on ``sub`` x ``sub`` points per
    bin. Bins expected to hold fewer than 5 draws are pooled with the mass off the grid."""
    from scipy import stats

    samples = samples.detach().double()
    n = samples.shape[0]
    edges = [torch.linspace(lo[i], hi[i], bins + 1, dtype=torch.float64) for i in range(2)]
    counts = np.histogram2d(
        samples[:, 0].numpy(), samples[:, 1].numpy(), bins=[e.numpy() for e in edges]
    )[0]
    t = (torch.arange(sub, dtype=torch.float64) + 0.5) / sub
    points = [(e[:-1, None] + (e[1:] - e[:-1])[:, None] * t).reshape(-1) for e in edges]
    grid = torch.stack(torch.meshgrid(*points, indexing="ij"), -1)
    area = (edges[0][1] - edges[0][0]) * (edges[1][1] - edges[1][0])
    density = log_density(grid).exp().reshape(bins, sub, bins, sub).mean((1, 3))
    expected = (n * area * density).numpy()
    keep = expected >= 5
    observed = np.append(counts[keep], n - counts[keep].sum())
    expected = np.append(expected[keep], n - expected[keep].sum())
    return float(stats.chisquare(observed, expected).pvalue)
