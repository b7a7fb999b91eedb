"""The pure LAX formula: its value, its unbiasedness for any control variate, its
phi-gradient."""

from __future__ import annotations

import torch

from pyro_discrete.estimators import gradient_variance_loss, lax_parameter_gradients


def test_lax_formula_for_a_normal():
    loc = torch.tensor([0.5, -1.0], requires_grad=True)
    scale = torch.tensor([2.0, 0.5], requires_grad=True)
    eps = torch.tensor([0.3, -1.2])
    b = loc + scale * eps
    log_q = torch.distributions.Normal(loc, scale).log_prob(b.detach())
    f = (b.detach() - 1.3) ** 2
    w = torch.tensor(0.7)

    def c(v):
        return w * v**2 + v.sin()

    g_loc, g_scale = lax_parameter_gradients([loc, scale], log_q, f, c(b.detach()), c(b))
    bd = b.detach()
    coefficient = f - c(bd)
    dc = 2 * w * bd + bd.cos()
    s = scale.detach()
    torch.testing.assert_close(g_loc, coefficient * eps / s + dc)
    torch.testing.assert_close(g_scale, coefficient * (eps**2 - 1) / s + dc * eps)


def test_lax_is_unbiased_for_a_gamma_and_an_arbitrary_control_variate():
    """E[f] = -(E[b^2] - 3 E[b]) for b ~ Gamma(k, r): the mean of 200,000 LAX estimates
    (through torch's implicit reparameterisation of the Gamma) matches its gradient, with
    a control variate that is far from f."""
    torch.manual_seed(0)
    n = 200_000
    k = torch.full((n,), 1.7, requires_grad=True)
    r = torch.full((n,), 0.8, requires_grad=True)
    q = torch.distributions.Gamma(k, r)
    b = q.rsample()
    f = -(b.detach() ** 2 - 3 * b.detach())  # a black box: used by value only

    def c(v):
        return 2.0 * torch.tanh(v - 1.0) + 0.3 * v

    g_k, g_r = lax_parameter_gradients([k, r], q.log_prob(b.detach()), f, c(b.detach()), c(b))
    k0, r0 = torch.tensor(1.7, requires_grad=True), torch.tensor(0.8, requires_grad=True)
    mean, second = k0 / r0, k0 * (k0 + 1) / r0**2
    exact = torch.autograd.grad(-(second - 3 * mean), [k0, r0])
    for g, e in zip((g_k, g_r), exact, strict=True):
        z = (g.mean() - e) / (g.std() / n**0.5)
        assert abs(z) < 4.5, (g.mean(), e)


def test_the_variance_objective_reaches_the_control_variate_only_with_create_graph():
    loc = torch.tensor([0.5], requires_grad=True)
    b = loc + torch.tensor([0.3])
    log_q = torch.distributions.Normal(loc, 1.0).log_prob(b.detach())
    phi = torch.tensor(0.2, requires_grad=True)

    def c(v):
        return phi * v**2

    (g,) = lax_parameter_gradients([loc], log_q, b.detach() ** 3, c(b.detach()), c(b), True)
    (dphi,) = torch.autograd.grad(gradient_variance_loss(g), phi)
    # g = (b^3 - phi b^2) (b - loc) + 2 phi b;  d g^2 / d phi = 2 g (2 b - b^2 (b - loc))
    bd, eps = b.detach(), 0.3
    g_value = (bd**3 - 0.2 * bd**2) * eps + 0.4 * bd
    torch.testing.assert_close(g.detach(), g_value)
    torch.testing.assert_close(dphi, (2 * g_value * (2 * bd - bd**2 * eps)).sum())
    (g,) = lax_parameter_gradients([loc], log_q, b.detach() ** 3, c(b.detach()), c(b))
    assert not g.requires_grad
