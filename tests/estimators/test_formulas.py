"""The pure estimator functions against closed forms and brute-force expectations."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_discrete import estimators as E
from pyro_discrete.distributions import functional as F


def _exact_bernoulli_gradient(logits, f):
    """d/dlogits E_{b ~ Bern(sigmoid(logits))}[f(b)] for independent coordinates."""
    theta = torch.sigmoid(logits)
    return (f(torch.ones_like(logits)) - f(torch.zeros_like(logits))) * theta * (1 - theta)


@pytest.mark.parametrize("method", ["arm", "disarm"])
def test_antithetic_gradients_match_closed_form(method):
    torch.manual_seed(0)
    logits = torch.tensor([-2.0, -0.3, 0.0, 1.5])
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0])

    def f(b):  # separable so the exact gradient is closed form per coordinate
        return (weights * (b - 0.3) ** 2).sum(-1, keepdim=True)

    n = 400_000
    u = F.uniform_like(logits, torch.Size((n, 4)))
    b = F.heaviside(F.logistic_sample(logits, u))
    b_anti = F.heaviside(F.logistic_sample(logits, E.antithetic_uniform(u)))
    if method == "arm":
        g = E.arm_logit_gradient(u, f(b), f(b_anti))
    else:
        g = E.disarm_logit_gradient(logits.expand(n, 4), b, b_anti, f(b), f(b_anti))
    exact = (weights * ((1 - 0.3) ** 2 - 0.3**2)) * torch.sigmoid(logits) * torch.sigmoid(-logits)
    se = g.std(0) / math.sqrt(n)
    assert ((g.mean(0) - exact).abs() / se).max() < 4.5


def test_disarm_variance_is_not_larger_than_arm():
    torch.manual_seed(1)
    logits = torch.tensor([-1.0, 0.5, 2.0])

    def f(b):
        return (b.sum(-1, keepdim=True) - 1.2) ** 2

    u = F.uniform_like(logits, torch.Size((100_000, 3)))
    b = F.heaviside(F.logistic_sample(logits, u))
    b_anti = F.heaviside(F.logistic_sample(logits, 1 - u))
    arm = E.arm_logit_gradient(u, f(b), f(b_anti))
    disarm = E.disarm_logit_gradient(logits.expand_as(u), b, b_anti, f(b), f(b_anti))
    assert (disarm.var(0) <= arm.var(0) * 1.02).all()


def test_leave_one_out_signal():
    f = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
    out = E.leave_one_out_signal(f, dim=0)
    assert torch.allclose(out[:, 0], torch.tensor([1 - 4.0, 3 - 3.0, 5 - 2.0]))
    assert torch.allclose(out.sum(0), torch.zeros(2))  # the baselines centre the signals
    with pytest.raises(ValueError, match="at least 2"):
        E.leave_one_out_signal(f[:1], dim=0)


def test_vimco_signals_match_direct_formula():
    torch.manual_seed(2)
    log_w = torch.randn(4, 3)  # K = 4 samples along dim 0, 3 data
    bound, signals = E.vimco_bound_and_signals(log_w, dim=0)
    k = 4
    assert torch.allclose(bound.squeeze(0), torch.logsumexp(log_w, 0) - math.log(k))
    for i in range(k):
        others = torch.cat([log_w[:i], log_w[i + 1 :]])
        substitute = others.mean(0, keepdim=True)
        replaced = torch.cat([others, substitute])
        expected = bound.squeeze(0) - (torch.logsumexp(replaced, 0) - math.log(k))
        assert torch.allclose(signals[i], expected, atol=1e-6)


def test_vimco_is_finite_for_very_different_log_weights():
    log_w = torch.tensor([[-1e4], [0.0], [-3.0]])
    bound, signals = E.vimco_bound_and_signals(log_w, dim=0)
    assert torch.isfinite(bound).all() and torch.isfinite(signals).all()


def test_score_surrogate_gradient_is_signal_times_score():
    logits = torch.tensor([0.3, -1.0], requires_grad=True)
    b = torch.tensor([1.0, 0.0])
    log_q = F.bernoulli_log_mass(logits, b)
    E.score_surrogate(log_q, torch.tensor([2.0, -1.0]), baseline=0.5).backward()
    expected = torch.tensor([1.5, -1.5]) * E.logit_score(logits.detach(), b, one_hot=False)
    assert torch.allclose(logits.grad, expected)


@pytest.mark.parametrize("one_hot", [False, True])
def test_relax_gradient_is_unbiased_for_a_fixed_surrogate(one_hot):
    """RELAX with any differentiable surrogate (here a random smooth one) is unbiased."""
    torch.manual_seed(3)
    n = 200_000
    if one_hot:
        logits = torch.tensor([0.2, -0.7, 1.1]).expand(n, 3).clone().requires_grad_(True)
        weights = torch.tensor([1.0, -2.0, 0.5])

        def f(b):
            return ((b * weights).sum(-1) - 0.2) ** 2

        u = F.uniform_like(logits)
        z = F.gumbel_sample(logits, u)
        b = F.onehot_argmax(z).detach()
        z_tilde = F.gumbel_conditional_sample(logits, b, F.gumbel_conditional_noise(logits, z, b))

        def c(zz):
            return torch.sin(F.relax_categorical(zz, 0.7) @ torch.tensor([0.3, 1.0, -0.4]))

        score = E.logit_score(logits, b, one_hot=True)
        grad = E.relax_logit_gradient(
            logits, score, f(b).unsqueeze(-1), c(z), c(z_tilde).unsqueeze(-1)
        )
        probs = torch.softmax(logits[0].detach(), -1)
        values = torch.stack([f(torch.eye(3)[k]) for k in range(3)])
        exact = probs * (values - (probs * values).sum())
    else:
        logits = torch.tensor([0.4, -1.3]).expand(n, 2).clone().requires_grad_(True)

        def f(b):
            return (b - 0.45) ** 2

        u = F.uniform_like(logits)
        z = F.logistic_sample(logits, u)
        b = F.heaviside(z).detach()
        z_tilde = F.logistic_conditional_sample(
            logits, b, F.logistic_conditional_noise(logits, z, b)
        )

        def c(zz):
            return torch.cos(2 * F.relax_bernoulli(zz, 0.5)) + zz.tanh()

        score = E.logit_score(logits, b, one_hot=False)
        grad = E.relax_logit_gradient(logits, score, f(b), c(z), c(z_tilde))
        exact = _exact_bernoulli_gradient(logits[0].detach(), f)
    se = grad.std(0) / math.sqrt(n)
    assert ((grad.mean(0) - exact).abs() / se).max() < 4.5


def test_rebar_coefficient_must_be_constant_in_theta():
    """Differentiating through the REINFORCE coefficient (the defect ESTIMATORS.md warns of)
    is biased; the library's function is not."""
    torch.manual_seed(4)
    n = 200_000
    logits = torch.tensor([0.7]).expand(n, 1).clone().requires_grad_(True)

    def f(b):
        return (b - 0.45) ** 2

    z = F.logistic_sample(logits, F.uniform_like(logits))
    b = F.heaviside(z).detach()
    z_tilde = F.logistic_conditional_sample(logits, b, F.logistic_conditional_noise(logits, z, b))
    relaxed, cond = f(F.relax_bernoulli(z, 0.5)), f(F.relax_bernoulli(z_tilde, 0.5))
    score = E.logit_score(logits, b, one_hot=False)
    good = E.rebar_logit_gradient(logits, score, f(b), relaxed, cond, eta=1.0)
    exact = _exact_bernoulli_gradient(logits[0].detach(), f)
    assert ((good.mean(0) - exact).abs() / (good.std(0) / math.sqrt(n))).max() < 4.5
    wrong_surrogate = ((f(b) - cond) * F.bernoulli_log_mass(logits, b) + relaxed - cond).sum()
    (wrong,) = torch.autograd.grad(wrong_surrogate, logits)
    assert ((wrong.mean(0) - exact).abs() / (wrong.std(0) / math.sqrt(n))).max() > 10
