"""RODEO's control variate from sums (O(K 2^D)) equals the pairwise one (O(K^2 D)), and the
cheaper is chosen (issue 22: K = 1000 took 6.7 GB and 89 s pairwise)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_discrete import estimators as E
from pyro_discrete.estimators.rodeo import enumerates, pairwise_evaluations


def _network(seed: int, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(2, 8), nn.LeakyReLU(0.3), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2)
    ).to(dtype)


def _inputs(k: int, batch: int, d: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, d, generator=g, dtype=dtype)
    value = torch.bernoulli(torch.sigmoid(logits).expand(k, batch, d), generator=g)
    signal = torch.randn(k, batch, 1, generator=g, dtype=dtype)
    value_grad = torch.randn(k, batch, d, generator=g, dtype=dtype)
    return signal, value, torch.sigmoid(logits), value_grad


@pytest.mark.parametrize("k,d", [(2, 1), (3, 1), (5, 1), (4, 2), (6, 3), (3, 4)])
@pytest.mark.parametrize("seed", [0, 1])
def test_enumerated_control_variate_equals_the_pairwise_one(k, d, seed):
    """Estimates and the gradients of the variance objective in the network's weights and
    in alpha, beta agree to rounding, for several K and neighbourhood sizes D."""
    signal, value, probs, value_grad = _inputs(k, 3, d, seed)
    results = {}
    for method in ("pairwise", "enumerate"):
        net = _network(seed)
        alpha = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        beta = torch.tensor(-1.3, dtype=torch.float64, requires_grad=True)
        grad = E.rodeo_logit_gradient(
            signal, value, probs, value_grad, net, alpha, beta, dim=-3, event_ndim=1, method=method
        )
        params = [alpha, beta, *net.parameters()]
        objective = grad.mean(0).pow(2).sum()
        results[method] = (grad.detach(), torch.autograd.grad(objective, params))
    (pair, pair_grads), (enum, enum_grads) = results["pairwise"], results["enumerate"]
    torch.testing.assert_close(enum, pair, rtol=1e-10, atol=1e-12)
    for a, b in zip(enum_grads, pair_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_enumerated_sums_lose_nothing_in_single_precision():
    """With K = 500 float32 samples, removing a sample's own term from the sum leaves h as
    accurate as the pairwise mean (the sum is accumulated in double precision)."""
    signal, value, probs, value_grad = _inputs(500, 2, 1, seed=3, dtype=torch.float32)
    net = _network(3, torch.float32)
    out = {
        method: E.rodeo_logit_gradient(
            signal, value, probs, value_grad, net, 0.9, 1.1, dim=-3, event_ndim=1, method=method
        )
        for method in ("pairwise", "enumerate")
    }
    torch.testing.assert_close(out["enumerate"], out["pairwise"], rtol=1e-5, atol=1e-6)


def test_the_cheaper_computation_is_chosen():
    # a Bernoulli per plate element (D = 1): linear in K from K = 4 on
    assert not enumerates(3, 1) and enumerates(4, 1) and enumerates(1000, 1)
    assert pairwise_evaluations(1000, 2, 1) == 0
    # a wide event block (a VAE's D = 200): 2^D points are out of reach, pairs are inherent
    assert not enumerates(1000, 200)
    assert pairwise_evaluations(10, 4, 200) == 10 * 9 * 4 * 201
    # D = 4 with K = 2: 16 points cost more than 2 pairs of 5 evaluations
    assert not enumerates(2, 4) and enumerates(8, 4)


def test_unknown_method_is_refused():
    signal, value, probs, value_grad = _inputs(3, 2, 1, seed=0)
    with pytest.raises(ValueError, match="method must be 'auto', 'enumerate' or 'pairwise'"):
        E.rodeo_logit_gradient(
            signal,
            value,
            probs,
            value_grad,
            _network(0),
            0.0,
            0.0,
            dim=-3,
            event_ndim=1,
            method="fast",
        )
