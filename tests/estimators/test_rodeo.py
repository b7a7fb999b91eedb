"""RODEO (Shi et al. 2022): Stein identities by enumeration, unbiasedness by a z-test."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from pyro_discrete import estimators as E

LOGITS = torch.tensor([-1.2, 0.3, 0.9])
WEIGHTS = torch.tensor([1.5, -2.0, 0.7])


def f_and_grad(x):
    lin = (WEIGHTS * x).sum(-1)
    f = torch.sin(lin) + 0.5 * x[..., 0] * x[..., 2] + lin**2 / 4
    grad = (torch.cos(lin) + lin / 2).unsqueeze(-1) * WEIGHTS
    grad = grad + 0.5 * torch.stack([x[..., 2], torch.zeros_like(lin), x[..., 0]], -1)
    return f, grad


def exact_logit_gradient():
    logits = LOGITS.clone().requires_grad_()
    q = torch.distributions.Bernoulli(logits=logits)
    total = sum(
        q.log_prob(torch.tensor(bits)).sum().exp() * f_and_grad(torch.tensor(bits))[0]
        for bits in itertools.product([0.0, 1.0], repeat=3)
    )
    return torch.autograd.grad(total, logits)[0]


def control_network(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.3), nn.Linear(16, 2))


def all_states(d):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)))


def neighbours(x):
    """x^{(i)} for every i: (..., D, D)."""
    eye = torch.eye(x.shape[-1], dtype=x.dtype)
    return x.unsqueeze(-2) * (1 - eye) + (1 - x.unsqueeze(-2)) * eye


@pytest.mark.parametrize("seed", range(3))
def test_gibbs_stein_operator_has_mean_zero_for_any_function(seed):
    torch.manual_seed(seed)
    d = 4
    theta = torch.rand(d, dtype=torch.float64)
    states = all_states(d).double()
    table = torch.randn(2**d, dtype=torch.float64)  # an arbitrary h on {0, 1}^4

    def h(y):
        index = (y * 2 ** torch.arange(d - 1, -1, -1.0, dtype=y.dtype)).sum(-1).long()
        return table[index]

    stein = E.gibbs_stein(h(states), h(neighbours(states)), states, theta)
    stein_score = E.gibbs_stein_score(h(states), h(neighbours(states)), states, theta)
    prob = torch.where(states > 0, theta, 1 - theta).prod(-1)
    assert abs((prob * stein).sum()) < 1e-12
    assert (prob.unsqueeze(-1) * stein_score).sum(0).abs().max() < 1e-12
    assert stein.abs().max() > 1e-3  # not trivially zero
    # the closed form of A[h s] against its definition with explicit neighbours
    score_nbrs = neighbours(states) - theta
    flip = torch.where(states > 0, 1 - theta, theta)
    direct = (
        flip.unsqueeze(-1)
        * (
            h(neighbours(states)).unsqueeze(-1) * score_nbrs
            - (h(states)[:, None] * (states - theta)).unsqueeze(-2)
        )
    ).mean(-2)
    assert torch.allclose(stein_score, direct, atol=1e-12)


def draws(k, n, alpha, beta, seed=0):
    net = control_network(seed)
    torch.manual_seed(seed + 100)
    probs = torch.sigmoid(LOGITS).expand(k, n, 3)
    x = torch.bernoulli(probs)
    f, g = f_and_grad(x)
    with torch.no_grad():
        out = E.rodeo_logit_gradient(f.unsqueeze(-1), x, probs, g, net, alpha, beta, -3, 1)
    return out.mean(0)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("alpha,beta", [(0.0, 0.0), (1.0, 0.5), (-2.0, 3.0)])
def test_unbiased_for_any_control_function(k, alpha, beta):
    g = draws(k, 100_000, alpha, beta)
    z = (g.mean(0) - exact_logit_gradient()) / (g.std(0) / math.sqrt(g.shape[0]))
    assert z.abs().max() < 4.5, z


def test_zero_scales_are_rloo():
    torch.manual_seed(1)
    x = torch.bernoulli(torch.full((4, 5, 3), 0.4))
    f, g = f_and_grad(x)
    out = E.rodeo_logit_gradient(
        f.unsqueeze(-1), x, torch.full_like(x, 0.4), g, control_network(), 0.0, 0.0, -3, 1
    )
    assert torch.allclose(out, E.leave_one_out_signal(f, 0).unsqueeze(-1) * (x - 0.4))


def test_control_reads_only_the_other_samples():
    """Changing sample 0's signal and gradient leaves h_0 (and so its Stein terms) unchanged,
    and with K = 2 sample 1's baseline then moves only by the change in f_0."""
    torch.manual_seed(2)
    x = torch.bernoulli(torch.full((2, 1, 3), 0.5))
    f, g = f_and_grad(x)
    net = control_network()
    args = (x, torch.full_like(x, 0.5))
    base = E.rodeo_logit_gradient(f.unsqueeze(-1), *args, g, net, 0.0, 1.0, -3, 1)
    f2, g2 = f.clone(), g.clone()
    f2[0] += 3.0
    g2[0] *= -2.0
    moved = E.rodeo_logit_gradient(f2.unsqueeze(-1), *args, g2, net, 0.0, 1.0, -3, 1)
    # sample 0: only its own signal changed (its h reads sample 1): shift 3 * s(x_0)
    assert torch.allclose(moved[0] - base[0], 3.0 * (x[0] - 0.5))
    assert not torch.allclose(moved[1], base[1])


def test_scalar_events_batch_dims_and_gradients_of_the_control_parameters():
    torch.manual_seed(3)
    probs = torch.rand(5, 3, 4)
    x = torch.bernoulli(probs)  # samples on dim -2, event_ndim = 0
    f = torch.randn(5, 3, 4)
    g = torch.randn(5, 3, 4)
    net = control_network()
    alpha = torch.tensor(0.3, requires_grad=True)
    beta = torch.tensor(-0.2, requires_grad=True)
    out = E.rodeo_logit_gradient(f, x, probs, g, net, alpha, beta, -2, 0)
    assert out.shape == (5, 3, 4)
    E.gradient_variance_loss(out.mean(-2)).backward()
    assert alpha.grad.abs() > 0 and beta.grad.abs() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_fewer_than_two_samples_is_an_error():
    x = torch.ones(1, 3)
    with pytest.raises(ValueError, match="at least 2 samples"):
        E.rodeo_logit_gradient(torch.ones(1, 1), x, x / 2, x, control_network(), 1.0, 1.0, -2, 1)
