"""Tests of the pure math in pyro_discrete.distributions.functional."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Bernoulli, OneHotCategorical

from pyro_discrete.distributions import functional as fn

from ._helpers import DTYPES, EXTREME_LOGITS, NUM_DRAWS, assert_frequencies


def _edge_noise(dtype: torch.dtype) -> torch.Tensor:
    # The extremes uniform_like can return, plus values whose conditional sample lies within
    # a few ulps of the threshold.
    eps = torch.finfo(dtype).eps
    return torch.tensor(
        [eps, 2 * eps, 1e-7, 1e-6, 1e-5, 0.25, 0.5, 0.75, 1 - 1e-5, 1 - 4 * eps, 1 - eps],
        dtype=dtype,
    ).clamp(eps, 1 - eps)


def test_uniform_like_in_open_interval():
    for dtype in DTYPES:
        x = torch.zeros(3, dtype=dtype)
        u = fn.uniform_like(x, torch.Size([NUM_DRAWS]))
        assert u.dtype == dtype and u.shape == (NUM_DRAWS,)
        assert ((u > 0) & (u < 1)).all()
    assert fn.uniform_like(torch.zeros(2, 3)).shape == (2, 3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_logistic_sample_thresholds_to_bernoulli(dtype):
    torch.manual_seed(0)
    logits = torch.tensor([-3.0, -0.5, 0.0, 1.0, 4.0], dtype=dtype)
    u = fn.uniform_like(logits, torch.Size([NUM_DRAWS, 5]))
    b = fn.heaviside(fn.logistic_sample(logits, u))
    assert b.dtype == dtype
    assert_frequencies(b, torch.sigmoid(logits))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("outcome", [0.0, 1.0])
def test_logistic_conditional_sample_always_thresholds_to_outcome(dtype, outcome):
    torch.manual_seed(1)
    logits = torch.tensor(EXTREME_LOGITS, dtype=dtype)
    edge = _edge_noise(dtype)
    v = torch.cat([edge, fn.uniform_like(logits, torch.Size([NUM_DRAWS]))])
    v = v.unsqueeze(-1).expand(-1, len(EXTREME_LOGITS))
    b = torch.full_like(v, outcome)
    z = fn.logistic_conditional_sample(logits, b, v)
    assert torch.isfinite(z).all()
    assert (fn.heaviside(z) == outcome).all()


def test_logistic_conditional_sample_regression_cancellation():
    # Before the fix, logit + (log v' - log(1 - v')) cancelled to exactly 0 for v near 0 and
    # a negative logit, so H(z~) = 0 although b = 1 (float32 and float64 alike).
    for dtype in DTYPES:
        eps = torch.finfo(dtype).eps
        logits = torch.tensor([-30.0, -10.0], dtype=dtype)
        z = fn.logistic_conditional_sample(
            logits, torch.ones(2, dtype=dtype), torch.full((2,), eps, dtype=dtype)
        )
        assert (z > 0).all(), z


@pytest.mark.parametrize("dtype", DTYPES)
def test_logistic_conditional_sample_matches_formula(dtype):
    # The sign-exact evaluation is the sheet's formula z~ = logit + log v' - log(1 - v').
    torch.manual_seed(2)
    logits = torch.linspace(-5, 5, 11, dtype=dtype)
    v = fn.uniform_like(logits, torch.Size([1000, 11]))
    # The reference is evaluated naively in float64 (in float32 the naive form is itself off
    # by 1e-2 near the threshold, which is the point of the rewrite).
    logits64, v64 = logits.double(), v.double()
    theta = torch.sigmoid(logits64)
    for outcome in (0.0, 1.0):
        vp = v64 * (1 - theta) if outcome == 0 else v64 * theta + (1 - theta)
        expected = logits64 + torch.log(vp) - torch.log1p(-vp)
        z = fn.logistic_conditional_sample(logits, torch.full_like(v, outcome), v)
        tol = 1e-5 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(z.double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "logits",
    [[30.0, -30.0], [-30.0, 30.0], [0.0, 0.0, 0.0], [30.0, 0.0, -30.0, 5.0, -5.0]],
)
def test_gumbel_conditional_sample_always_has_outcome_as_argmax(dtype, logits):
    torch.manual_seed(3)
    logits = torch.tensor(logits, dtype=dtype)
    k = logits.shape[-1]
    n = NUM_DRAWS // k
    eps = torch.finfo(dtype).eps
    for j in range(k):
        b = torch.nn.functional.one_hot(torch.tensor(j), k).to(dtype)
        v = fn.uniform_like(logits, torch.Size([n, k]))
        # Edge rows: the top at its smallest Gumbel, the others at their largest.
        edge = torch.where(
            b > 0.5, torch.tensor(eps, dtype=dtype), torch.tensor(1 - eps, dtype=dtype)
        )
        v = torch.cat([v, edge.expand(3, k), torch.full((3, k), eps, dtype=dtype)])
        z = fn.gumbel_conditional_sample(logits, b, v)
        assert torch.isfinite(z).all()
        assert (z.argmax(-1) == j).all()


def test_gumbel_conditional_sample_regression_ties():
    # Before the fix, a non-top entry could round to exactly the top value; the tie sent
    # argmax to the lower index.
    for dtype in DTYPES:
        eps = torch.finfo(dtype).eps
        logits = torch.tensor([30.0, -30.0], dtype=dtype)
        b = torch.tensor([0.0, 1.0], dtype=dtype)
        v = torch.tensor([1 - eps, eps], dtype=dtype)
        z = fn.gumbel_conditional_sample(logits, b, v)
        assert z[1] > z[0], z


def test_gumbel_conditional_sample_tie_break_keeps_gradient():
    # The one-ulp nudge is a straight-through shift: the gradient is that of the formula.
    logits = torch.tensor([30.0, -30.0], dtype=torch.float64, requires_grad=True)
    eps = torch.finfo(torch.float64).eps
    b = torch.tensor([0.0, 1.0], dtype=torch.float64)
    v = torch.tensor([1 - eps, eps], dtype=torch.float64)
    z = fn.gumbel_conditional_sample(logits, b, v)
    (g,) = torch.autograd.grad(z[0], logits)
    log_theta = torch.log_softmax(logits.detach().requires_grad_(), -1)
    lnv = torch.log(-torch.log(v))
    (g_ref,) = torch.autograd.grad(-torch.logaddexp(lnv[0] - log_theta[0], lnv[1]), log_theta)
    assert torch.isfinite(g).all()
    # the two routes differ only by the softmax Jacobian; compare through it
    jac = torch.autograd.functional.jacobian(lambda x: torch.log_softmax(x, -1), logits.detach())
    torch.testing.assert_close(g, g_ref @ jac)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gumbel_sample_argmax_law(dtype):
    torch.manual_seed(4)
    logits = torch.tensor([1.0, -0.5, 0.0, 2.0], dtype=dtype)
    u = fn.uniform_like(logits, torch.Size([NUM_DRAWS, 4]))
    b = fn.onehot_argmax(fn.gumbel_sample(logits, u))
    assert b.dtype == dtype and (b.sum(-1) == 1).all()
    assert_frequencies(b, torch.softmax(logits, -1))


def _check_noise_recovery(logits, z, b, noise_fn, sample_fn):
    """``sample_fn(logits, b, noise_fn(logits, z, b))`` reproduces ``z``.

    float64: exactly up to rounding, for every draw. float32: a uniform near 1 has spacing
    6e-8 and noise is clamped to [eps, 1 - eps], so in the far tails (v > 1 - 5e-5, e.g.
    z_b > 10; or v < 4 eps, e.g. max z < -2.7) one float32 ulp of v moves z~ by up to ~0.15.
    There the recovery is checked in two exact halves: the float32 noise equals the exact
    (float64) noise of the same z to float32 resolution, and the float32 sampler maps that
    noise to what float64 would. Away from the tails z~ == z to 2e-4.
    """
    v = noise_fn(logits, z, b)
    assert ((v > 0) & (v < 1)).all()
    z_cond = sample_fn(logits, b, v)
    if z.dtype == torch.float64:
        torch.testing.assert_close(z_cond, z, rtol=1e-8, atol=1e-8)
        return
    eps = torch.finfo(torch.float32).eps
    v_exact = noise_fn(logits.double(), z.double(), b.double())
    torch.testing.assert_close(v.double(), v_exact, rtol=1e-5, atol=4 * eps)
    z_ref = sample_fn(logits.double(), b.double(), v.double())
    torch.testing.assert_close(z_cond.double(), z_ref, rtol=1e-5, atol=1e-5)
    bulk = ((v > 4 * eps) & (v < 1 - 5e-5)).reshape(v.shape[0], -1).all(-1)
    assert bulk.float().mean() > 0.99
    torch.testing.assert_close(z_cond[bulk], z[bulk], rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("logit", [-30.0, -5.0, 0.0, 2.0, 30.0])
def test_logistic_noise_recovery(dtype, logit):
    torch.manual_seed(5)
    logits = torch.full((NUM_DRAWS,), logit, dtype=dtype)
    z = fn.logistic_sample(logits, fn.uniform_like(logits))
    _check_noise_recovery(
        logits, z, fn.heaviside(z), fn.logistic_conditional_noise, fn.logistic_conditional_sample
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("logits", [[2.0, 0.0, -1.0, -3.0], [30.0, 0.0, -30.0]])
def test_gumbel_noise_recovery(dtype, logits):
    torch.manual_seed(6)
    logits = torch.tensor(logits, dtype=dtype).expand(NUM_DRAWS // 2, -1)
    z = fn.gumbel_sample(logits, fn.uniform_like(logits))
    _check_noise_recovery(
        logits, z, fn.onehot_argmax(z), fn.gumbel_conditional_noise, fn.gumbel_conditional_sample
    )


def test_relaxations():
    z = torch.tensor([-2.0, 0.0, 3.0])
    torch.testing.assert_close(fn.relax_bernoulli(z, 0.5), torch.sigmoid(z / 0.5))
    torch.testing.assert_close(fn.relax_categorical(z, 0.5), torch.softmax(z / 0.5, -1))
    assert fn.heaviside(z).tolist() == [0.0, 0.0, 1.0]
    assert fn.onehot_argmax(z).tolist() == [0.0, 0.0, 1.0]


def test_log_masses_match_torch_and_have_value_gradients():
    logits = torch.tensor([-30.0, -1.0, 0.0, 2.0, 30.0], dtype=torch.float64)
    for value in (torch.zeros_like(logits), torch.ones_like(logits)):
        expected = Bernoulli(logits=logits).log_prob(value)
        torch.testing.assert_close(fn.bernoulli_log_mass(logits, value), expected)
    v = torch.full_like(logits, 0.3, requires_grad=True)
    (g,) = torch.autograd.grad(fn.bernoulli_log_mass(logits, v).sum(), v)
    torch.testing.assert_close(g, logits)  # d/dv = log theta - log(1 - theta) = logit

    cat_logits = torch.tensor([[1.0, -2.0, 0.5], [30.0, 0.0, -30.0]], dtype=torch.float64)
    onehots = torch.eye(3, dtype=torch.float64).unsqueeze(1)  # (3, 1, 3) against (2, 3)
    expected = OneHotCategorical(logits=cat_logits).log_prob(onehots)
    torch.testing.assert_close(fn.categorical_log_mass(cat_logits, onehots), expected)
    v = torch.full((2, 3), 1 / 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(fn.categorical_log_mass(cat_logits, v).sum(), v)
    torch.testing.assert_close(g, torch.log_softmax(cat_logits, -1))
