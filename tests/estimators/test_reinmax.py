"""ReinMax's gradient formula: autograd of its value, the official backward, and its
exactness in expectation for quadratic functions (the paper's second-order claim)."""

from __future__ import annotations

import itertools

import pytest
import torch

from pyro_discrete import estimators as E
from pyro_discrete.distributions import functional as F


def _official_backward(logits, hard, grad, tau):
    # microsoft/ReinMax ReinMaxCore.backward, transcribed as the reference to match
    y_soft = logits.softmax(-1)
    shifted = 0.5 * ((logits / tau).softmax(-1) + hard)
    g1 = 2 * grad * shifted
    g1 = g1 - shifted * g1.sum(-1, keepdim=True)
    g0 = -0.5 * grad * y_soft
    g0 = g0 - y_soft * g0.sum(-1, keepdim=True)
    g = g0 + g1
    return g - g.mean(-1, keepdim=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_categorical_value_backward_is_the_official_formula(dtype, tau):
    torch.manual_seed(0)
    logits = torch.randn(6, 4, dtype=dtype, requires_grad=True)
    hard = F.onehot_argmax(F.gumbel_sample(logits.detach(), F.uniform_like(logits.detach())))
    grad = torch.randn(6, 4, dtype=dtype)
    value = F.reinmax_categorical(logits, hard, tau)
    assert torch.equal(value.detach(), hard)
    (autograd,) = torch.autograd.grad((value * grad).sum(), logits)
    closed = E.reinmax_logit_gradient(logits.detach(), hard, grad, tau)
    torch.testing.assert_close(autograd, closed)
    torch.testing.assert_close(closed, _official_backward(logits.detach(), hard, grad, tau))
    # and it is not straight-through's J(pi_0) g
    pi = logits.detach().softmax(-1)
    straight = pi * grad - pi * (pi * grad).sum(-1, keepdim=True)
    assert (closed - straight).abs().max() > 1e-2


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_bernoulli_is_the_two_class_categorical(tau):
    torch.manual_seed(1)
    logits = torch.randn(50, dtype=torch.float64, requires_grad=True)
    hard = torch.bernoulli(torch.sigmoid(logits.detach()))
    grad = torch.randn(50, dtype=torch.float64)
    value = F.reinmax_bernoulli(logits, hard, tau)
    assert torch.equal(value.detach(), hard)
    (autograd,) = torch.autograd.grad((value * grad).sum(), logits)
    closed = E.reinmax_logit_gradient(logits.detach(), hard, grad, tau, one_hot=False)
    torch.testing.assert_close(autograd, closed)
    two_class = torch.stack([torch.zeros_like(logits.detach()), logits.detach()], -1)
    one_hot = torch.stack([1 - hard, hard], -1)
    grad_2 = torch.stack([torch.zeros_like(grad), grad], -1)
    g2 = _official_backward(two_class, one_hot, grad_2, tau)
    # logits (0, l): the Bernoulli logit is the second one, the first is held at 0
    torch.testing.assert_close(closed, g2[:, 1])


def _expected_gradients(logits, a, c, tau, one_hot):
    """Exact expectations of ReinMax's and straight-through's estimates (enumerating the
    sample) and the exact gradient of E[f], for f(x) = x^T A x + c^T x."""
    logits = logits.detach().requires_grad_()
    n = logits.shape[-1]
    if one_hot:
        values = torch.eye(n, dtype=logits.dtype)
        probs = torch.softmax(logits, -1).expand(n, n).gather(-1, values.argmax(-1, True))[:, 0]
    else:
        values = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=logits.dtype)
        theta = torch.sigmoid(logits)
        probs = (values * theta + (1 - values) * (1 - theta)).prod(-1)
    f = ((values @ a) * values).sum(-1) + values @ c
    (exact,) = torch.autograd.grad((probs * f).sum(), logits)
    probs, lg = probs.detach(), logits.detach().expand(values.shape)
    grad_f = values @ (a + a.T) + c
    reinmax = E.reinmax_logit_gradient(lg, values, grad_f, tau, one_hot=one_hot)
    if one_hot:
        pi = torch.softmax(lg, -1)
        straight = pi * grad_f - pi * (pi * grad_f).sum(-1, keepdim=True)
    else:
        straight = torch.sigmoid(lg) * torch.sigmoid(-lg) * grad_f
    mean = lambda g: (probs.unsqueeze(-1) * g).sum(0)  # noqa: E731
    return exact, mean(reinmax), mean(straight)


@pytest.mark.parametrize("one_hot", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_exact_in_expectation_for_quadratic_f_at_unit_temperature(one_hot, seed):
    """The paper's claim: Heun's method is exact for quadratic f, straight-through is not."""
    g = torch.Generator().manual_seed(seed)
    n = 4
    logits = torch.randn(n, generator=g, dtype=torch.float64)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    c = torch.randn(n, generator=g, dtype=torch.float64)
    exact, reinmax, straight = _expected_gradients(logits, a, c, 1.0, one_hot)
    torch.testing.assert_close(reinmax, exact)
    assert (straight - exact).norm() > 0.05 * exact.norm()
    # at another temperature ReinMax is biased (the check above can fail)
    _, reinmax_hot, _ = _expected_gradients(logits, a, c, 3.0, one_hot)
    assert (reinmax_hot - exact).norm() > 1e-3 * exact.norm()


def test_not_exact_for_a_cubic_f():
    """Second order only: a cubic term leaves a bias (so the quadratic test is not vacuous)."""
    logits = torch.tensor([0.3, -1.0], dtype=torch.float64, requires_grad=True)
    values = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    theta = torch.sigmoid(logits)
    probs = (values * theta + (1 - values) * (1 - theta)).prod(-1)
    f = lambda x: x[..., 0] ** 3 + x[..., 1] ** 3  # noqa: E731
    (exact,) = torch.autograd.grad((probs * f(values)).sum(), logits)
    grad_f = 3 * values**2
    est = E.reinmax_logit_gradient(logits.detach().expand(4, 2), values, grad_f, one_hot=False)
    mean = (probs.detach().unsqueeze(-1) * est).sum(0)
    assert (mean - exact).abs().max() > 1e-2


def test_temperature_broadcasts_over_the_batch():
    torch.manual_seed(2)
    logits = torch.randn(3, 5)
    hard = F.onehot_argmax(logits)
    grad = torch.randn(3, 5)
    tau = torch.tensor([1.0, 2.0, 4.0])
    batched = E.reinmax_logit_gradient(logits, hard, grad, tau)
    for i in range(3):
        row = E.reinmax_logit_gradient(logits[i], hard[i], grad[i], float(tau[i]))
        torch.testing.assert_close(batched[i], row)
    assert batched.sum(-1).abs().max() < 1e-5  # softmax is shift invariant


# ---------------------------------------------------------------------------------------
# ReinMax-CV and ReinMax-Rao (our constructions) and decoupled straight-through
# ---------------------------------------------------------------------------------------


def _enumerated(logits, one_hot):
    """Every sample value and its probability."""
    n = logits.shape[-1]
    if one_hot:
        values = torch.eye(n, dtype=logits.dtype)
        return values, torch.softmax(logits, -1)
    values = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=logits.dtype)
    theta = torch.sigmoid(logits)
    return values, (values * theta + (1 - values) * (1 - theta)).prod(-1)


@pytest.mark.parametrize("one_hot", [True, False])
@pytest.mark.parametrize("tau", [1.0, 2.5, 0.7])
def test_expected_reinmax_product_is_the_mean_over_the_sample(one_hot, tau):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, generator=g, dtype=torch.float64)
    c = torch.randn(4, generator=g, dtype=torch.float64)
    values, probs = _enumerated(logits, one_hot)
    per_value = E.reinmax_logit_gradient(logits.expand(values.shape), values, c, tau, one_hot)
    mean = (probs.unsqueeze(-1) * per_value).sum(0)
    torch.testing.assert_close(E.expected_reinmax_product(logits, c, tau, one_hot), mean)
    if tau == 1.0:  # ReinMax's trapezoid averages to straight-through's Jacobian
        if one_hot:
            pi = torch.softmax(logits, -1)
            straight = pi * c - pi * (pi * c).sum()
        else:
            straight = torch.sigmoid(logits) * torch.sigmoid(-logits) * c
        torch.testing.assert_close(mean, straight)


@pytest.mark.parametrize("one_hot", [True, False])
@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_reinmax_cv_keeps_reinmax_expectation_and_removes_constant_gradients(one_hot, tau):
    g = torch.Generator().manual_seed(4)
    n = 4
    logits = torch.randn(n, generator=g, dtype=torch.float64)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    c = torch.randn(n, generator=g, dtype=torch.float64)
    baseline = torch.randn(n, generator=g, dtype=torch.float64)
    values, probs = _enumerated(logits, one_hot)
    lg = logits.expand(values.shape)
    grad_f = values @ (a + a.T) + c
    mean = lambda x: (probs.unsqueeze(-1) * x).sum(0)  # noqa: E731
    reinmax = E.reinmax_logit_gradient(lg, values, grad_f, tau, one_hot)
    cv = E.reinmax_cv_logit_gradient(lg, values, grad_f, baseline, tau, one_hot)
    torch.testing.assert_close(mean(cv), mean(reinmax))
    assert (cv - reinmax).abs().max() > 1e-2  # the correction is not zero sample by sample
    # a constant value gradient equal to the baseline: every sample gives the mean exactly
    constant = E.reinmax_cv_logit_gradient(lg, values, c.expand(values.shape), c, tau, one_hot)
    torch.testing.assert_close(constant, mean(constant).expand_as(constant))
    plain = E.reinmax_logit_gradient(lg, values, c.expand(values.shape), tau, one_hot)
    assert plain.var(0).max() > 1e-3  # which ReinMax alone does not


@pytest.mark.parametrize("one_hot", [True, False])
def test_reinmax_rao_with_hard_endpoints_is_reinmax(one_hot):
    torch.manual_seed(5)
    logits = torch.randn(6, 4, dtype=torch.float64)
    if one_hot:
        hard = F.onehot_argmax(F.gumbel_sample(logits, F.uniform_like(logits)))
    else:
        hard = torch.bernoulli(torch.sigmoid(logits))
    grad = torch.randn(6, 4, dtype=torch.float64)
    for tau in (1.0, 2.0):
        torch.testing.assert_close(
            E.reinmax_rao_logit_gradient(logits, hard.unsqueeze(0), grad, tau, one_hot),
            E.reinmax_logit_gradient(logits, hard, grad, tau, one_hot),
        )
    # K endpoints: the mean of the K single-endpoint estimates (a Rao-Blackwell average)
    endpoints = torch.rand(3, 6, 4, dtype=torch.float64)
    each = [E.reinmax_rao_logit_gradient(logits, e[None], grad, 1.5, one_hot) for e in endpoints]
    torch.testing.assert_close(
        E.reinmax_rao_logit_gradient(logits, endpoints, grad, 1.5, one_hot),
        torch.stack(each).mean(0),
    )


@pytest.mark.parametrize("one_hot", [True, False])
@pytest.mark.parametrize("tau_f,tau_b", [(1.0, 0.5), (2.0, 0.7)])
def test_decoupled_st_gradient_is_the_tempered_relaxation_gradient(one_hot, tau_f, tau_b):
    torch.manual_seed(6)
    logits = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    u = F.uniform_like(logits.detach())
    grad = torch.randn(5, 3, dtype=torch.float64)
    if one_hot:
        noise = -torch.log(-torch.log(u))
        soft = torch.softmax((logits / tau_f + noise) / tau_b, -1)
    else:
        noise = torch.log(u) - torch.log1p(-u)
        soft = torch.sigmoid((logits / tau_f + noise) / tau_b)
    (autograd,) = torch.autograd.grad((soft * grad).sum(), logits)
    closed = E.decoupled_st_logit_gradient(logits.detach(), noise, grad, tau_f, tau_b, one_hot)
    torch.testing.assert_close(closed, autograd)


@pytest.mark.parametrize("one_hot", [True, False])
@pytest.mark.parametrize("lam", [1.0, 1.7])
def test_shifted_logits_are_the_heun_midpoint(one_hot, lam):
    torch.manual_seed(7)
    logits = torch.randn(6, 4, dtype=torch.float64)
    if one_hot:
        hard = F.onehot_argmax(F.gumbel_sample(logits, F.uniform_like(logits)))
        midpoint = 0.5 * (torch.softmax(logits / lam, -1) + hard)
        torch.testing.assert_close(
            torch.softmax(E.shifted_logits(logits, hard, lam, one_hot), -1), midpoint
        )
    else:
        hard = torch.bernoulli(torch.sigmoid(logits))
        midpoint = 0.5 * (torch.sigmoid(logits / lam) + hard)
        torch.testing.assert_close(
            torch.sigmoid(E.shifted_logits(logits, hard, lam, one_hot)), midpoint
        )
    # a category of probability 0 that was not drawn: finite, not -inf
    extreme = torch.tensor([[0.0, -2000.0, 3.0]], dtype=torch.float64)
    hard = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.isfinite(E.shifted_logits(extreme, hard)).all()


@pytest.mark.parametrize("one_hot", [True, False])
@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_conditional_jacobian_gradient_is_autograd_of_the_relaxations(one_hot, tau):
    """ReinMax-Rao's Gumbel-Rao form (Wang & Bui eq. 17): twice the mean over the K draws of
    the gradient of the relaxation at the shifted logits, minus half ST's at the logits."""
    torch.manual_seed(8)
    logits = torch.randn(5, 3, dtype=torch.float64)
    grad = torch.randn(5, 3, dtype=torch.float64)
    theta = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(4, 5, 3, dtype=torch.float64)  # any K = 4 perturbations

    def relax(x):
        return torch.softmax(x / tau, -1) if one_hot else torch.sigmoid(x / tau)

    (first,) = torch.autograd.grad((relax(theta + noise) * grad).sum() / 4, theta)
    lg = logits.clone().requires_grad_(True)
    pi_0 = torch.softmax(lg, -1) if one_hot else torch.sigmoid(lg)
    (second,) = torch.autograd.grad((pi_0 * grad).sum(), lg)
    relaxed = relax(theta.detach() + noise)
    torch.testing.assert_close(
        E.conditional_jacobian_logit_gradient(logits, relaxed, grad, tau, one_hot),
        2 * first - 0.5 * second,
    )
