"""ConditionalLogisticBernoulli and ConditionalGumbelCategorical."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from pyro_discrete.distributions import (
    ConditionalGumbelCategorical,
    ConditionalLogisticBernoulli,
    GumbelCategorical,
    LogisticBernoulli,
)

from ._helpers import (
    DTYPES,
    EXTREME_LOGITS,
    FD_DRAWS,
    GOF_THRESHOLD,
    KS_THRESHOLD,
    NUM_DRAWS,
    assert_gradient_matches_finite_differences,
    assert_mean_close,
    density_goodness_of_fit,
    histogram_2d_pvalue,
)

# ---------------------------------------------------------------------------------------
# ConditionalLogisticBernoulli
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("outcome", [0.0, 1.0])
def test_logistic_conditional_always_thresholds_to_outcome(dtype, outcome):
    torch.manual_seed(0)
    logits = torch.tensor(EXTREME_LOGITS, dtype=dtype)
    d = ConditionalLogisticBernoulli(logits=logits, outcome=outcome)
    z = d.rsample((NUM_DRAWS // 2,))
    assert z.dtype == dtype and torch.isfinite(z).all()
    assert (LogisticBernoulli(logits=logits).threshold(z) == outcome).all()
    assert torch.isfinite(d.log_prob(z)).all()


@pytest.mark.parametrize("logit", [-2.0, 0.0, 1.5, 6.0])
def test_logistic_conditional_marginalises_to_unconditional(logit):
    torch.manual_seed(1)
    logits = torch.tensor(logit, dtype=torch.float64)
    b = torch.bernoulli(torch.sigmoid(logits).expand(NUM_DRAWS))
    z_cond = ConditionalLogisticBernoulli(logits=logits, outcome=b).sample()
    z = LogisticBernoulli(logits=logits).sample((NUM_DRAWS,))
    assert stats.ks_2samp(z_cond.numpy(), z.numpy()).pvalue > KS_THRESHOLD
    # power: conditioning on b but sampling with a logit off by 0.3 is rejected
    z_wrong = ConditionalLogisticBernoulli(logits=logits + 0.3, outcome=b).sample()
    assert stats.ks_2samp(z_wrong.numpy(), z.numpy()).pvalue < KS_THRESHOLD


@pytest.mark.parametrize("logit", [-30.0, -2.0, 0.0, 3.0, 30.0])
@pytest.mark.parametrize("outcome", [0.0, 1.0])
def test_logistic_conditional_density_integrates_to_one(logit, outcome):
    d = ConditionalLogisticBernoulli(
        logits=torch.tensor(logit, dtype=torch.float64), outcome=outcome, validate_args=False
    )

    def density(z):
        return d.log_prob(torch.tensor(z, dtype=torch.float64)).exp().item()

    inside = (0, np.inf) if outcome == 1 else (-np.inf, 0)
    outside = (-np.inf, 0) if outcome == 1 else (0, np.inf)
    total = integrate.quad(density, *inside)[0]
    assert abs(total - 1) < 1e-8
    assert integrate.quad(density, *outside)[0] == 0.0


@pytest.mark.parametrize("logit,outcome", [(0.0, 1.0), (-1.5, 1.0), (2.0, 0.0)])
def test_logistic_conditional_log_prob_matches_histogram(logit, outcome):
    torch.manual_seed(2)
    d = ConditionalLogisticBernoulli(
        logits=torch.tensor(logit, dtype=torch.float64), outcome=outcome
    )
    z = d.sample((NUM_DRAWS,))
    lo, hi = (0.0, 10.0) if outcome == 1 else (-10.0, 0.0)
    edges = torch.linspace(lo, hi, 41, dtype=torch.float64)
    t = (torch.arange(64, dtype=torch.float64) + 0.5) / 64
    points = edges[:-1, None] + (edges[1:] - edges[:-1])[:, None] * t
    masses = d.log_prob(points).exp().mean(-1) * (edges[1:] - edges[:-1])
    freq = torch.histogram(z, edges).hist / NUM_DRAWS
    tol = 5 * (masses * (1 - masses) / NUM_DRAWS).sqrt() + 1e-6
    assert ((freq - masses).abs() <= tol).all()
    assert density_goodness_of_fit(z, d.log_prob(z).exp()) > GOF_THRESHOLD


def test_logistic_conditional_log_prob_is_truncated_logistic():
    logits = torch.tensor([-30.0, -1.0, 0.5, 30.0], dtype=torch.float64)
    outcome = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    d = ConditionalLogisticBernoulli(logits=logits, outcome=outcome, validate_args=False)
    z = torch.tensor([[0.5, -0.5, 2.0, -3.0], [-0.5, 0.5, -2.0, 3.0]], dtype=torch.float64)
    lp = d.log_prob(z)
    log_mass = torch.distributions.Bernoulli(logits=logits).log_prob(outcome)
    expected = LogisticBernoulli(logits=logits).log_prob(z[0]) - log_mass
    torch.testing.assert_close(lp[0], expected)
    assert torch.isneginf(lp[1]).all()
    strict = ConditionalLogisticBernoulli(logits=logits, outcome=outcome, validate_args=True)
    with pytest.raises(ValueError, match="support"):
        strict.log_prob(z[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_logistic_conditional_gradient_matches_finite_differences(dtype):
    logits = torch.tensor([-1.0, 0.5, 2.0, 0.0], dtype=torch.float64)
    outcome = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=dtype)

    def objective(lg):
        torch.manual_seed(3)
        z = ConditionalLogisticBernoulli(logits=lg, outcome=outcome).rsample((FD_DRAWS,))
        return (torch.sin(z) + 0.1 * z**2).mean(0).sum()

    assert_gradient_matches_finite_differences(objective, logits, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_logistic_conditional_gradients_finite_at_extremes(dtype):
    torch.manual_seed(4)
    logits = torch.tensor([-30.0, -30.0, 30.0, 30.0], dtype=dtype, requires_grad=True)
    outcome = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=dtype)
    temperature = torch.tensor(0.05, dtype=dtype, requires_grad=True)
    d = ConditionalLogisticBernoulli(logits=logits, outcome=outcome)
    z = d.rsample((1000,))
    loss = torch.sigmoid(z / temperature).sum() + d.log_prob(z).sum()
    grads = torch.autograd.grad(loss, [logits, temperature])
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", DTYPES)
def test_logistic_coupled_rsample_reproduces_z(dtype):
    torch.manual_seed(5)
    logits = torch.tensor([-3.0, 0.0, 2.0], dtype=dtype, requires_grad=True)
    d = LogisticBernoulli(logits=logits)
    z = d.sample((1000,))
    coupled = d.conditional(d.threshold(z)).coupled_rsample(z)
    tol = 2e-4 if dtype == torch.float32 else 1e-8
    torch.testing.assert_close(coupled, z, rtol=tol, atol=tol)
    (g,) = torch.autograd.grad(coupled.sum(), logits)
    assert torch.isfinite(g).all() and (g > 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_logistic_conditional_shapes(dtype):
    logits = torch.zeros(3, dtype=dtype)
    d = ConditionalLogisticBernoulli(logits=logits, outcome=torch.ones(2, 3, dtype=dtype))
    assert d.batch_shape == (2, 3) and d.event_shape == () and d.logits.shape == (2, 3)
    d = ConditionalLogisticBernoulli(
        logits=torch.zeros(2, 1, dtype=dtype), outcome=torch.tensor([0.0, 1.0, 1.0])
    )
    assert d.batch_shape == (2, 3) and d.outcome.dtype == dtype
    z = d.rsample((5,))
    assert z.shape == (5, 2, 3) and z.dtype == dtype
    assert ((z > 0).to(dtype) == d.outcome).all()
    assert d.log_prob(z).shape == (5, 2, 3)
    e = d.expand((4, 2, 3))
    assert type(e) is ConditionalLogisticBernoulli and e.batch_shape == (4, 2, 3)
    assert e.outcome.shape == (4, 2, 3)
    ze = e.rsample()
    assert ((ze > 0).to(dtype) == e.outcome).all()
    i = e.to_event(2)
    assert i.batch_shape == (4,) and i.log_prob(ze).shape == (4,)
    p = ConditionalLogisticBernoulli(
        probs=torch.tensor([0.2, 0.7], dtype=dtype), outcome=torch.tensor(True)
    )
    assert p.batch_shape == (2,) and (p.rsample((10,)) > 0).all()
    assert p.expand((3, 2)).probs.shape == (3, 2)
    scalar = ConditionalLogisticBernoulli(logits=1.0, outcome=0.0)
    assert scalar.batch_shape == () and scalar.rsample().item() <= 0


def test_logistic_conditional_bad_inputs():
    logits = torch.zeros(3)
    with pytest.raises(ValueError, match="outcome"):
        ConditionalLogisticBernoulli(
            logits=logits, outcome=torch.tensor([0.0, 0.5, 1.0]), validate_args=True
        )
    with pytest.raises(ValueError, match="outcome"):
        ConditionalLogisticBernoulli(
            logits=logits, outcome=torch.tensor([0.0, 2.0, 1.0]), validate_args=True
        )
    with pytest.raises(ValueError, match="outcome"):
        ConditionalLogisticBernoulli(logits=logits, outcome=torch.ones(4))
    with pytest.raises(ValueError, match="outcome"):
        ConditionalLogisticBernoulli(logits=logits)
    with pytest.raises(ValueError, match="logits.*probs"):
        ConditionalLogisticBernoulli(logits=logits, probs=torch.full((3,), 0.5), outcome=1.0)
    with pytest.raises(ValueError, match="logits.*probs"):
        ConditionalLogisticBernoulli(outcome=1.0)
    with pytest.raises(ValueError, match="probs"):
        ConditionalLogisticBernoulli(probs=torch.tensor([1.5]), outcome=1.0, validate_args=True)


# ---------------------------------------------------------------------------------------
# ConditionalGumbelCategorical
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("logits", [[30.0, -30.0], [30.0, 0.0, -30.0], [1.0, -0.5, 0.0, 2.0]])
def test_gumbel_conditional_always_has_outcome_as_argmax(dtype, logits):
    torch.manual_seed(6)
    logits = torch.tensor(logits, dtype=dtype)
    k = logits.shape[-1]
    outcome = torch.eye(k, dtype=dtype)  # every category at once, batch_shape (k,)
    d = ConditionalGumbelCategorical(logits=logits, outcome=outcome)
    z = d.rsample((NUM_DRAWS // k,))
    assert z.shape == (NUM_DRAWS // k, k, k) and torch.isfinite(z).all()
    assert (GumbelCategorical(logits=logits).threshold(z) == outcome).all()
    assert torch.isfinite(d.log_prob(z)).all()


@pytest.mark.parametrize("logits", [[0.7, -0.3], [1.0, -0.5, 0.0]])
def test_gumbel_conditional_marginalises_to_unconditional(logits):
    torch.manual_seed(7)
    logits = torch.tensor(logits, dtype=torch.float64)
    k = logits.shape[-1]
    b = torch.distributions.OneHotCategorical(logits=logits).sample((NUM_DRAWS,))
    z_cond = ConditionalGumbelCategorical(logits=logits, outcome=b).sample()
    z = GumbelCategorical(logits=logits).sample((NUM_DRAWS,))
    # coordinates, a difference (dependence between coordinates) and the maximum
    projections = [lambda x, i=i: x[..., i] for i in range(k)]
    projections += [lambda x: x[..., 0] - x[..., 1], lambda x: x.max(-1).values]
    for proj in projections:
        assert stats.ks_2samp(proj(z_cond).numpy(), proj(z).numpy()).pvalue > KS_THRESHOLD
    # power: an independent (unconditional) draw given b does not reproduce the coupling
    z_wrong = ConditionalGumbelCategorical(logits=logits.flip(-1), outcome=b).sample()
    assert stats.ks_2samp(z_wrong[..., 0].numpy(), z[..., 0].numpy()).pvalue < KS_THRESHOLD


def test_gumbel_conditional_density_integrates_to_one_2d():
    # Gauss-Legendre on the half plane {z_other < z_b}, mapped to a square so the integrand
    # is smooth: z_b in [lo, hi], z_other = lo + t (z_b - lo), t in [0, 1].
    logits = torch.tensor([1.0, -0.5], dtype=torch.float64)
    nodes, weights = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(400))
    lo, hi = -8.0, 45.0
    zb = lo + (hi - lo) * (nodes + 1) / 2
    wb = weights * (hi - lo) / 2
    t = (nodes + 1) / 2
    wt = weights / 2
    for j in range(2):
        d = ConditionalGumbelCategorical(
            logits=logits, outcome=torch.eye(2, dtype=torch.float64)[j]
        )
        z_other = lo + t[None, :] * (zb[:, None] - lo)
        z = torch.stack([zb[:, None].expand_as(z_other), z_other], -1)
        if j == 1:
            z = z.flip(-1)
        density = d.log_prob(z).exp() * (zb[:, None] - lo)
        total = (wb[:, None] * wt[None, :] * density).sum()
        assert abs(total.item() - 1) < 1e-8, total


@pytest.mark.parametrize(
    "logits", [[1.0, -0.5, 0.0], [30.0, 0.0, -3.0], [0.2, 0.1, -0.4, 1.0, 0.0]]
)
def test_gumbel_conditional_normaliser_identity(logits):
    # For z ~ p(z): E[p(z | b) / p(z)] = P(argmax z = b) / theta_b = 1 for every b.
    torch.manual_seed(8)
    logits = torch.tensor(logits, dtype=torch.float64)
    k = logits.shape[-1]
    z = GumbelCategorical(logits=logits).sample((NUM_DRAWS,))
    cond = ConditionalGumbelCategorical(
        logits=logits, outcome=torch.eye(k, dtype=torch.float64), validate_args=False
    )
    ratio = (
        cond.log_prob(z.unsqueeze(-2)) - GumbelCategorical(logits=logits).log_prob(z).unsqueeze(-1)
    ).exp()
    assert ratio.shape == (NUM_DRAWS, k)
    theta = torch.softmax(logits, -1)
    # where theta_b is tiny (logit -30) the hit is never drawn; the identity holds trivially
    ok = theta > 1e-3
    assert_mean_close(ratio[:, ok], 1.0)


@pytest.mark.parametrize("b", [0, 1])
def test_gumbel_conditional_log_prob_matches_2d_histogram(b):
    # Binned in w = (z_b, log(z_b - z_other)), which maps the half plane {z_other < z_b}
    # smoothly onto R^2 (density p(z) (z_b - z_other)), so no bin straddles the edge of
    # the support.
    torch.manual_seed(9)
    logits = torch.tensor([0.5, -0.5], dtype=torch.float64)
    outcome = torch.eye(2, dtype=torch.float64)[b]
    d = ConditionalGumbelCategorical(logits=logits, outcome=outcome)
    z = d.sample((NUM_DRAWS,))
    gap = z[:, b] - z[:, 1 - b]
    w = torch.stack([z[:, b], gap.log()], -1)

    def to_z(w):
        top, other = w[..., 0], w[..., 0] - w[..., 1].exp()
        return torch.stack([top, other] if b == 0 else [other, top], -1)

    def log_density(w, lp=d.log_prob):
        return lp(to_z(w)) + w[..., 1]

    lo, hi = (-2.0, -5.0), (7.0, 2.5)
    assert histogram_2d_pvalue(w, log_density, lo, hi) > GOF_THRESHOLD
    # power: forgetting the 1 / theta_b normaliser is rejected
    unconditional = GumbelCategorical(logits=logits).log_prob
    assert histogram_2d_pvalue(w, lambda x: log_density(x, unconditional), lo, hi) < 1e-6


def test_gumbel_conditional_log_prob_formula_and_support():
    logits = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    b = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    d = ConditionalGumbelCategorical(logits=logits, outcome=b, validate_args=False)
    inside = torch.tensor([0.1, -0.3, 1.2], dtype=torch.float64)
    outside = torch.tensor([1.5, -0.3, 1.2], dtype=torch.float64)
    expected = GumbelCategorical(logits=logits).log_prob(inside) - torch.log_softmax(logits, -1)[2]
    torch.testing.assert_close(d.log_prob(inside), expected)
    assert torch.isneginf(d.log_prob(outside))
    strict = ConditionalGumbelCategorical(logits=logits, outcome=b, validate_args=True)
    with pytest.raises(ValueError, match="support"):
        strict.log_prob(outside)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gumbel_conditional_gradient_matches_finite_differences(dtype):
    logits = torch.tensor([0.5, -1.0, 1.5], dtype=torch.float64)
    outcome = torch.eye(3, dtype=dtype)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)

    def objective(lg):
        torch.manual_seed(10)
        z = ConditionalGumbelCategorical(logits=lg, outcome=outcome).rsample((FD_DRAWS,))
        return ((torch.softmax(z / 0.7, -1) * c).sum(-1) + 0.01 * (z**2).sum(-1)).mean()

    assert_gradient_matches_finite_differences(objective, logits, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gumbel_conditional_gradients_finite_at_extremes(dtype):
    torch.manual_seed(11)
    logits = torch.tensor([30.0, 0.0, -30.0], dtype=dtype, requires_grad=True)
    temperature = torch.tensor(0.05, dtype=dtype, requires_grad=True)
    d = ConditionalGumbelCategorical(logits=logits, outcome=torch.eye(3, dtype=dtype))
    z = d.rsample((1000,))
    loss = (torch.softmax(z / temperature, -1) * torch.arange(3, dtype=dtype)).sum()
    loss = loss + d.log_prob(z).sum()
    grads = torch.autograd.grad(loss, [logits, temperature])
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gumbel_coupled_rsample_reproduces_z(dtype):
    torch.manual_seed(12)
    logits = torch.tensor([1.0, -0.5, 0.0], dtype=dtype, requires_grad=True)
    d = GumbelCategorical(logits=logits)
    z = d.sample((1000,))
    coupled = d.conditional(d.threshold(z)).coupled_rsample(z)
    tol = 2e-4 if dtype == torch.float32 else 1e-8
    torch.testing.assert_close(coupled, z, rtol=tol, atol=tol)
    (g,) = torch.autograd.grad((coupled * torch.tensor([1.0, 2.0, 3.0], dtype=dtype)).sum(), logits)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_gumbel_conditional_shapes(dtype):
    logits = torch.zeros(2, 1, 3, dtype=dtype)
    outcome = torch.eye(3, dtype=dtype)  # batch (3,) against (2, 1)
    d = ConditionalGumbelCategorical(logits=logits, outcome=outcome)
    assert d.batch_shape == (2, 3) and d.event_shape == (3,)
    z = d.rsample((4,))
    assert z.shape == (4, 2, 3, 3) and z.dtype == dtype
    assert (z.argmax(-1) == torch.arange(3)).all()
    assert d.log_prob(z).shape == (4, 2, 3)
    e = d.expand((5, 2, 3))
    assert type(e) is ConditionalGumbelCategorical and e.batch_shape == (5, 2, 3)
    assert e.outcome.shape == (5, 2, 3, 3)
    assert (e.rsample().argmax(-1) == torch.arange(3)).all()
    i = e.to_event(1)
    assert i.batch_shape == (5, 2) and i.event_shape == (3, 3)
    p = ConditionalGumbelCategorical(
        probs=torch.tensor([0.2, 0.8], dtype=dtype), outcome=torch.tensor([1, 0])
    )
    assert p.batch_shape == () and p.outcome.dtype == dtype
    assert (p.rsample((100,)).argmax(-1) == 0).all()
    assert p.expand((3,)).probs.shape == (3, 2)


def test_gumbel_conditional_bad_inputs():
    logits = torch.zeros(3)
    for bad in ([1.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]):
        with pytest.raises(ValueError, match="outcome"):
            ConditionalGumbelCategorical(
                logits=logits, outcome=torch.tensor(bad), validate_args=True
            )
    with pytest.raises(ValueError, match="outcome"):
        ConditionalGumbelCategorical(logits=logits, outcome=torch.tensor([0.0, 1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="outcome"):
        ConditionalGumbelCategorical(logits=logits, outcome=torch.tensor(1.0))
    with pytest.raises(ValueError, match="outcome"):
        ConditionalGumbelCategorical(logits=torch.zeros(4, 3), outcome=torch.eye(3)[:2])
    with pytest.raises(ValueError, match="outcome"):
        ConditionalGumbelCategorical(logits=logits)
    with pytest.raises(ValueError, match="logits.*probs"):
        ConditionalGumbelCategorical(outcome=torch.eye(3)[0])
    with pytest.raises(ValueError, match="logits"):
        ConditionalGumbelCategorical(logits=torch.tensor(1.0), outcome=torch.tensor([1.0]))
