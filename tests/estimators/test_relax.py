"""``relax_logit_gradients``: several sites' RELAX gradients from one backward pass equal
the per-site ``relax_logit_gradient``."""

from __future__ import annotations

import pytest
import torch

from pyro_discrete.distributions import functional as dfn
from pyro_discrete.estimators import relax_logit_gradient, relax_logit_gradients


def _site(shape, seed: int, eta: torch.Tensor, temp: torch.Tensor):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g).requires_grad_()
    u = torch.rand(shape, generator=g)
    z = dfn.logistic_sample(logits, u)
    b = dfn.heaviside(z).detach()
    zt = dfn.logistic_conditional_sample(logits, b, dfn.logistic_conditional_noise(logits, z, b))
    target = torch.randn(shape, generator=g)

    def f(v):
        return (v - target).pow(2)

    c_z = eta * f(dfn.relax_bernoulli(z, temp))
    c_zt = eta * f(dfn.relax_bernoulli(zt, temp))
    return logits, b - logits.sigmoid(), f(b), c_z, c_zt


@pytest.mark.parametrize("create_graph", [False, True])
def test_joint_gradients_equal_the_per_site_ones(create_graph):
    eta = torch.tensor(0.7, requires_grad=True)
    temp = torch.tensor(0.4, requires_grad=True)
    sites = [_site((3,), 0, eta, temp), _site((2, 4), 1, eta, temp)]
    joint = relax_logit_gradients(*map(list, zip(*sites, strict=True)), create_graph=create_graph)
    for site, got in zip(sites, joint, strict=True):
        want = relax_logit_gradient(*site, create_graph=create_graph)
        torch.testing.assert_close(got, want)
    if create_graph:  # the joint estimate is differentiable in the control variates
        objective = sum(g.pow(2).sum() for g in joint)
        (d_eta,) = torch.autograd.grad(objective, eta, retain_graph=True)
        per_site = sum(relax_logit_gradient(*s, create_graph=True).pow(2).sum() for s in sites)
        (want,) = torch.autograd.grad(per_site, eta)
        torch.testing.assert_close(d_eta, want)


def test_a_site_whose_surrogate_has_no_gradient_gets_the_score_term_alone():
    logits = torch.zeros(2, requires_grad=True)
    score, f_hard = torch.tensor([0.5, -0.5]), torch.tensor([1.0, 2.0])
    (grad,) = relax_logit_gradients(
        [logits], [score], [f_hard], [torch.zeros(2)], [torch.full((2,), 0.25)]
    )
    torch.testing.assert_close(grad, (f_hard - 0.25) * score)
