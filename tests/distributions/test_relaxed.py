"""LogisticBernoulli and GumbelCategorical: sampling laws, densities, gradients, shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from pyro_discrete.distributions import (
    ConditionalGumbelCategorical,
    ConditionalLogisticBernoulli,
    GumbelCategorical,
    LogisticBernoulli,
)

from ._helpers import (
    DTYPES,
    FD_DRAWS,
    GOF_THRESHOLD,
    NUM_DRAWS,
    assert_frequencies,
    assert_gradient_matches_finite_differences,
    density_goodness_of_fit,
    histogram_2d_pvalue,
)

# ---------------------------------------------------------------------------------------
# LogisticBernoulli
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_logistic_threshold_law(dtype):
    torch.manual_seed(0)
    logits = torch.tensor([-30.0, -3.0, -0.5, 0.0, 1.0, 4.0, 30.0], dtype=dtype)
    d = LogisticBernoulli(logits=logits)
    z = d.rsample((NUM_DRAWS,))
    assert z.dtype == dtype and z.shape == (NUM_DRAWS, 7)
    assert_frequencies(d.threshold(z), torch.sigmoid(logits))


@pytest.mark.parametrize("logit", [-30.0, -2.0, 0.0, 3.0, 30.0])
def test_logistic_density_integrates_to_one(logit):
    d = LogisticBernoulli(logits=torch.tensor(logit, dtype=torch.float64))

    def density(z):
        return d.log_prob(torch.tensor(z, dtype=torch.float64)).exp().item()

    total, err = integrate.quad(density, -np.inf, np.inf, points=None)
    assert abs(total - 1) < 1e-8, (total, err)


def _bin_masses(log_prob, edges: torch.Tensor, sub: int = 64) -> torch.Tensor:
    """Mass of each bin under exp(log_prob), by the midpoint rule on ``sub`` sub-cells."""
    lo, hi = edges[:-1], edges[1:]
    t = (torch.arange(sub, dtype=edges.dtype) + 0.5) / sub
    points = lo.unsqueeze(-1) + (hi - lo).unsqueeze(-1) * t
    return log_prob(points).exp().mean(-1) * (hi - lo)


@pytest.mark.parametrize("logit", [-2.0, 0.0, 1.5])
def test_logistic_log_prob_matches_histogram(logit):
    torch.manual_seed(1)
    d = LogisticBernoulli(logits=torch.tensor(logit, dtype=torch.float64))
    z = d.sample((NUM_DRAWS,))
    edges = torch.linspace(logit - 8, logit + 8, 41, dtype=torch.float64)
    counts = torch.histogram(z, edges).hist
    assert_frequencies_from_counts(counts, _bin_masses(d.log_prob, edges), NUM_DRAWS)
    assert density_goodness_of_fit(z, d.log_prob(z).exp()) > GOF_THRESHOLD


def assert_frequencies_from_counts(counts, masses, n, sigmas=5.0):
    freq = counts / n
    tol = sigmas * (masses * (1 - masses) / n).sqrt() + 1e-6
    assert ((freq - masses).abs() <= tol).all(), (freq, masses)


def test_logistic_log_prob_matches_closed_form_and_cdf():
    logits = torch.tensor([-30.0, -1.0, 0.0, 2.0, 30.0], dtype=torch.float64)
    d = LogisticBernoulli(logits=logits)
    z = torch.linspace(-60, 60, 241, dtype=torch.float64).unsqueeze(-1)
    x = z - logits
    expected = x.neg() - 2 * torch.log1p(torch.exp(-x))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(d.log_prob(z)[finite], expected[finite])
    assert torch.isfinite(d.log_prob(z)).all()  # the symmetric form has no overflow
    u = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64).unsqueeze(-1)
    torch.testing.assert_close(d.cdf(d.icdf(u)), u.expand(3, 5))


def _mc_objective(make, seed, sample_shape=(FD_DRAWS,)):
    """A common-random-numbers Monte-Carlo estimate of E[g(z)], smooth in the parameters."""
    torch.manual_seed(seed)
    z = make().rsample(sample_shape)
    return (torch.sin(z) + 0.1 * z**2).mean(0).sum()


@pytest.mark.parametrize("dtype", DTYPES)
def test_logistic_reparameterised_gradient_matches_finite_differences(dtype):
    logits = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)
    assert_gradient_matches_finite_differences(
        lambda lg: _mc_objective(lambda: LogisticBernoulli(logits=lg), 7), logits, dtype
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_logistic_gradients_finite_at_extremes(dtype):
    torch.manual_seed(2)
    logits = torch.tensor([-30.0, 30.0], dtype=dtype, requires_grad=True)
    temperature = torch.tensor(0.05, dtype=dtype, requires_grad=True)
    d = LogisticBernoulli(logits=logits)
    z = d.rsample((1000,))
    loss = d.relax(z, temperature).sum() + d.log_prob(z).sum()
    g_logits, g_temp = torch.autograd.grad(loss, [logits, temperature])
    assert torch.isfinite(z).all() and torch.isfinite(d.log_prob(z)).all()
    assert torch.isfinite(g_logits).all() and torch.isfinite(g_temp).all()


def test_logistic_relax_and_threshold():
    d = LogisticBernoulli(logits=torch.zeros(3))
    z = torch.tensor([-1.0, 0.0, 2.0])
    assert d.threshold(z).tolist() == [0.0, 0.0, 1.0]
    torch.testing.assert_close(d.relax(z, 0.5), torch.sigmoid(z / 0.5))
    torch.testing.assert_close(
        d.relax(z, torch.tensor([1.0, 2.0, 4.0])), torch.sigmoid(z / torch.tensor([1.0, 2.0, 4.0]))
    )
    for bad in (0.0, -1.0, torch.tensor(0.0), torch.tensor([1.0, -0.5, 1.0])):
        with pytest.raises(ValueError, match="temperature"):
            d.relax(z, bad)


def test_logistic_probs_parameterisation():
    probs = torch.tensor([0.1, 0.5, 0.9])
    a = LogisticBernoulli(probs=probs)
    b = LogisticBernoulli(logits=torch.logit(probs))
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(b.probs, probs)
    z = torch.tensor([0.3, -0.2, 1.0])
    torch.testing.assert_close(a.log_prob(z), b.log_prob(z))
    assert "probs" in a.__dict__ and "logits" in b.__dict__


@pytest.mark.parametrize("dtype", DTYPES)
def test_logistic_shapes_expand_to_event(dtype):
    d = LogisticBernoulli(logits=torch.zeros(4, 1, dtype=dtype))
    assert d.batch_shape == (4, 1) and d.event_shape == ()
    assert d.rsample((2, 3)).shape == (2, 3, 4, 1)
    e = d.expand((4, 5))
    assert type(e) is LogisticBernoulli and e.batch_shape == (4, 5)
    z = e.rsample((2,))
    assert z.shape == (2, 4, 5) and z.dtype == dtype
    assert e.log_prob(z).shape == (2, 4, 5)
    i = e.to_event(1)
    assert i.batch_shape == (4,) and i.event_shape == (5,)
    assert i.log_prob(i.rsample((3,))).shape == (3, 4)
    assert LogisticBernoulli(logits=0.5).batch_shape == ()
    p = LogisticBernoulli(probs=torch.full((3,), 0.2, dtype=dtype)).expand((2, 3))
    assert p.batch_shape == (2, 3) and p.probs.shape == (2, 3) and p.logits.dtype == dtype
    c = d.conditional(torch.ones(4, 5, dtype=dtype))
    assert isinstance(c, ConditionalLogisticBernoulli) and c.batch_shape == (4, 5)


def test_logistic_moments():
    torch.manual_seed(3)
    d = LogisticBernoulli(logits=torch.tensor([1.5], dtype=torch.float64))
    z = d.sample((NUM_DRAWS,))
    assert abs(z.mean().item() - 1.5) < 5 * math.pi / math.sqrt(3 * NUM_DRAWS)
    assert d.variance.item() == pytest.approx(math.pi**2 / 3)
    assert d.entropy().item() == 2.0


# ---------------------------------------------------------------------------------------
# GumbelCategorical
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("logits", [[1.0, -0.5, 0.0, 2.0], [30.0, 0.0, -30.0], [-30.0, 30.0]])
def test_gumbel_argmax_law(dtype, logits):
    torch.manual_seed(4)
    logits = torch.tensor(logits, dtype=dtype)
    d = GumbelCategorical(logits=logits)
    z = d.rsample((NUM_DRAWS,))
    b = d.threshold(z)
    assert z.dtype == dtype and (b.sum(-1) == 1).all()
    assert_frequencies(b, torch.softmax(logits, -1))


def test_gumbel_log_prob_is_sum_of_gumbel_densities():
    logits = torch.tensor([[2.0, -1.0, 0.5], [30.0, 0.0, -30.0]], dtype=torch.float64)
    d = GumbelCategorical(logits=logits)
    torch.manual_seed(5)
    z = d.sample((10,))
    expected = torch.distributions.Gumbel(torch.log_softmax(logits, -1), 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(d.log_prob(z), expected)
    # unnormalised logits give the same distribution
    shifted = GumbelCategorical(logits=logits + 7.0)
    torch.testing.assert_close(shifted.log_prob(z), expected)


def test_gumbel_density_integrates_to_one_2d():
    d = GumbelCategorical(logits=torch.tensor([1.0, -0.5], dtype=torch.float64))
    grid = torch.linspace(-12, 25, 1501, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1)
    density = d.log_prob(z).exp()
    total = torch.trapezoid(torch.trapezoid(density, grid, dim=-1), grid)
    assert abs(total.item() - 1) < 1e-6


def test_gumbel_log_prob_matches_2d_histogram():
    torch.manual_seed(6)
    d = GumbelCategorical(logits=torch.tensor([0.5, -0.5], dtype=torch.float64))
    z = d.sample((NUM_DRAWS,))
    lo, hi = (-2.5, -3.0), (6.0, 5.0)
    assert histogram_2d_pvalue(z, d.log_prob, lo, hi) > GOF_THRESHOLD
    # the test has power: a density off by a factor 0.9 is rejected
    assert histogram_2d_pvalue(z, lambda x: d.log_prob(x) + math.log(0.9), lo, hi) < 1e-6


def _softmax_objective(make, seed, c, n=FD_DRAWS):
    torch.manual_seed(seed)
    z = make().rsample((n,))
    return (torch.softmax(z / 0.7, -1) * c).sum(-1).mean() + 0.01 * (z**2).mean()


@pytest.mark.parametrize("dtype", DTYPES)
def test_gumbel_reparameterised_gradient_matches_finite_differences(dtype):
    logits = torch.tensor([0.5, -1.0, 1.5], dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)
    assert_gradient_matches_finite_differences(
        lambda lg: _softmax_objective(lambda: GumbelCategorical(logits=lg), 8, c), logits, dtype
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_gumbel_gradients_finite_at_extremes(dtype):
    torch.manual_seed(9)
    logits = torch.tensor([30.0, 0.0, -30.0], dtype=dtype, requires_grad=True)
    temperature = torch.tensor(0.05, dtype=dtype, requires_grad=True)
    d = GumbelCategorical(logits=logits)
    z = d.rsample((1000,))
    loss = (d.relax(z, temperature) * torch.tensor([1.0, 2.0, 3.0], dtype=dtype)).sum()
    loss = loss + d.log_prob(z).sum()
    g_logits, g_temp = torch.autograd.grad(loss, [logits, temperature])
    assert torch.isfinite(d.log_prob(z)).all()
    assert torch.isfinite(g_logits).all() and torch.isfinite(g_temp).all()


def test_gumbel_relax_and_threshold():
    d = GumbelCategorical(logits=torch.zeros(2, 3))
    z = torch.tensor([[0.0, 2.0, 1.0], [3.0, -1.0, 0.0]])
    assert d.threshold(z).tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    torch.testing.assert_close(d.relax(z, 0.5), torch.softmax(z / 0.5, -1))
    t = torch.tensor([0.5, 2.0])  # one temperature per batch element
    torch.testing.assert_close(d.relax(z, t), torch.softmax(z / t.unsqueeze(-1), -1))
    with pytest.raises(ValueError, match="temperature"):
        d.relax(z, -0.1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gumbel_shapes_expand_to_event(dtype):
    d = GumbelCategorical(logits=torch.zeros(2, 1, 4, dtype=dtype))
    assert d.batch_shape == (2, 1) and d.event_shape == (4,)
    e = d.expand((2, 3))
    assert type(e) is GumbelCategorical and e.batch_shape == (2, 3) and e.event_shape == (4,)
    z = e.rsample((5,))
    assert z.shape == (5, 2, 3, 4) and z.dtype == dtype
    assert e.log_prob(z).shape == (5, 2, 3)
    i = e.to_event(1)
    assert i.event_shape == (3, 4) and i.log_prob(z).shape == (5, 2)
    p = GumbelCategorical(probs=torch.tensor([0.2, 0.3, 0.5], dtype=dtype))
    torch.testing.assert_close(p.logits.exp(), p.probs)
    assert p.expand((7,)).rsample().shape == (7, 3)
    c = d.conditional(torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=dtype))
    assert isinstance(c, ConditionalGumbelCategorical) and c.batch_shape == (2, 1)


def test_gumbel_mean():
    torch.manual_seed(10)
    d = GumbelCategorical(logits=torch.tensor([0.3, -0.7], dtype=torch.float64))
    z = d.sample((NUM_DRAWS,))
    se = math.pi / math.sqrt(6 * NUM_DRAWS)
    assert ((z.mean(0) - d.mean).abs() < 5 * se).all()


def test_bad_arguments():
    for cls, logits in (
        (LogisticBernoulli, torch.zeros(3)),
        (GumbelCategorical, torch.zeros(2, 3)),
    ):
        with pytest.raises(ValueError, match="logits.*probs"):
            cls()
        with pytest.raises(ValueError, match="logits.*probs"):
            cls(logits=logits, probs=torch.softmax(logits, -1))
        with pytest.raises(ValueError, match="support|value"):
            cls(logits=logits, validate_args=True).log_prob(torch.full(logits.shape, float("nan")))
    with pytest.raises(ValueError, match="probs"):
        LogisticBernoulli(probs=torch.tensor([1.2]), validate_args=True)
    with pytest.raises(ValueError, match="probs"):
        GumbelCategorical(probs=torch.tensor([0.5, -0.5]), validate_args=True)
    with pytest.raises(ValueError, match="logits"):
        GumbelCategorical(logits=torch.tensor(1.0))
