"""Double control variates (Titsias & Shi 2022): the pure formula against enumeration."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pyro_discrete import estimators as E

LOGITS = torch.tensor([-1.2, 0.3, 0.9])
WEIGHTS = torch.tensor([1.5, -2.0, 0.7])


def f_and_grad(x):
    """A non-linear f on R^3 (so the Taylor control variate is not exact) and its gradient."""
    lin = (WEIGHTS * x).sum(-1)
    f = torch.sin(lin) + 0.5 * (x[..., 0] * x[..., 2]) + lin**2 / 4
    grad = (torch.cos(lin) + lin / 2).unsqueeze(-1) * WEIGHTS
    grad = grad + 0.5 * torch.stack([x[..., 2], torch.zeros_like(lin), x[..., 0]], -1)
    return f, grad


def exact_logit_gradient(logits):
    logits = logits.clone().requires_grad_()
    q = torch.distributions.Bernoulli(logits=logits)
    total = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=len(logits)):
        x = torch.tensor(bits)
        total = total + q.log_prob(x).sum().exp() * f_and_grad(x)[0]
    (grad,) = torch.autograd.grad(total, logits)
    return grad


def draws(k, n, alpha, seed=0):
    """``n`` independent K-sample estimates, the replicas along dim 1: ``(n, 3)``."""
    torch.manual_seed(seed)
    probs = torch.sigmoid(LOGITS).expand(k, n, 3)
    x = torch.bernoulli(probs)
    f, g = f_and_grad(x)
    per_sample = E.double_cv_logit_gradient(f.unsqueeze(-1), x, probs, g, alpha, -3, 1)
    return per_sample.mean(0)


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("alpha", [0.0, 1.0, -2.5])
def test_unbiased_on_a_factorised_bernoulli(k, alpha):
    g = draws(k, 200_000, alpha)
    exact = exact_logit_gradient(LOGITS)
    z = (g.mean(0) - exact) / (g.std(0) / math.sqrt(g.shape[0]))
    assert z.abs().max() < 4.5, z


def test_alpha_zero_is_rloo():
    torch.manual_seed(1)
    x = torch.bernoulli(torch.full((4, 5, 3), 0.4))
    f, g = f_and_grad(x)
    dcv = E.double_cv_logit_gradient(f.unsqueeze(-1), x, torch.full_like(x, 0.4), g, 0.0, -3, 1)
    rloo = E.leave_one_out_signal(f, 0).unsqueeze(-1) * (x - 0.4)
    assert torch.allclose(dcv, rloo)


def test_taylor_control_variate_reduces_variance_for_a_near_linear_f():
    """The paper's motivation: for f close to linear, alpha = 1 removes most variance."""
    torch.manual_seed(2)
    n, probs = 50_000, torch.sigmoid(LOGITS).expand(2, 50_000, 3)
    x = torch.bernoulli(probs)
    f = (WEIGHTS * x).sum(-1, keepdim=True) + 0.2 * x[..., :1] * x[..., 2:]
    g = WEIGHTS + 0.2 * torch.stack([x[..., 2], torch.zeros_like(x[..., 0]), x[..., 0]], -1)
    rloo, dcv = (E.double_cv_logit_gradient(f, x, probs, g, a, -3, 1).mean(0) for a in (0, 1))
    assert (dcv.var(0).sum() < 0.1 * rloo.var(0).sum()).item()
    theta = torch.sigmoid(LOGITS)
    slope = WEIGHTS + 0.2 * torch.stack([theta[2], torch.tensor(0.0), theta[0]])
    exact = slope * theta * (1 - theta)
    assert ((dcv.mean(0) - exact).abs() < 4.5 * dcv.std(0) / math.sqrt(n)).all()


def test_correction_is_the_conditional_mean_of_the_taylor_term():
    """E[c_k s(x_k) | x_{-k}] = alpha * gbar_{-k} * theta (1 - theta), by enumeration."""
    theta = torch.sigmoid(LOGITS)
    gbar = torch.tensor([0.3, -1.1, 2.0])
    total = torch.zeros(3)
    for bits in itertools.product([0.0, 1.0], repeat=3):
        x = torch.tensor(bits)
        prob = torch.where(x > 0, theta, 1 - theta).prod()
        total += prob * 0.7 * (gbar * (x - theta)).sum() * (x - theta)
    assert torch.allclose(total, 0.7 * gbar * theta * (1 - theta), atol=1e-12)


def test_alpha_one_is_exact_for_linear_f_with_scalar_events():
    """event_ndim = 0 (one Bernoulli per batch element), a batch dim after the samples."""
    torch.manual_seed(3)
    probs = torch.full((3, 6), 0.3)
    x = torch.bernoulli(probs)
    f = 2.0 * x + 1.0
    g = torch.full_like(x, 2.0)  # f is linear: alpha = 1 makes the estimate exact
    out = E.double_cv_logit_gradient(f, x, probs, g, 1.0, -2, 0)
    assert out.shape == (3, 6)
    # every single sample's estimate is the exact gradient a * theta * (1 - theta)
    assert torch.allclose(out, torch.full((3, 6), 2.0 * 0.3 * 0.7))


def test_alpha_receives_a_gradient_for_the_variance_objective():
    torch.manual_seed(4)
    x = torch.bernoulli(torch.full((2, 4, 3), 0.5))
    f, g = f_and_grad(x)
    alpha = torch.tensor(0.2, requires_grad=True)
    out = E.double_cv_logit_gradient(f.unsqueeze(-1), x, torch.full_like(x, 0.5), g, alpha, -3, 1)
    E.gradient_variance_loss(out.mean(0)).backward()
    assert alpha.grad is not None and alpha.grad.abs() > 0


def test_fewer_than_two_samples_is_an_error():
    x = torch.ones(1, 3)
    with pytest.raises(ValueError, match="at least 2 samples"):
        E.double_cv_logit_gradient(torch.ones(1, 1), x, x / 2, x, 1.0, -2, 1)
