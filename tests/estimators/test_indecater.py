"""The IndeCateR formulas against hand computations and exact enumeration."""

from __future__ import annotations

import itertools

import pytest
import torch

from pyro_discrete.estimators import (
    indecater_changed_indices,
    indecater_gradient,
    indecater_logit_gradient,
    indecater_surrogate,
    indecater_value_table,
)


def test_changed_indices_by_hand():
    # x = (2, 0), K = 3: slot d(K-1) + r - 1 sets variable d to (x_d + r) mod 3
    index = torch.tensor([2, 0])
    expected = torch.tensor([[0, 0], [1, 0], [2, 1], [2, 2]])
    assert torch.equal(indecater_changed_indices(index, 3), expected)
    # Bernoulli bits: each slot flips one bit, batch dims kept
    bits = torch.tensor([[1, 0, 1], [0, 0, 0]])
    flipped = indecater_changed_indices(bits, 2)
    assert flipped.shape == (3, 2, 3)
    assert torch.equal(flipped[1], torch.tensor([[1, 1, 1], [0, 1, 0]]))


def test_value_table_and_gradient_by_hand():
    """Two bits, f(x) = 3 x1 + 5 x2 + 2 x1 x2, sample x = (1, 0).

    F[d, k] = f(x with x_d = k): F[0] = (f(0,0), f(1,0)) = (0, 3),
    F[1] = (f(1,0), f(1,1)) = (3, 10). For p_d(1) = sigmoid(l_d) the estimate is
    d/dl_d [sum_k p_d(k) F[d, k]] = s_d (1 - s_d) (F[d, 1] - F[d, 0]): 3 s0(1-s0), 7 s1(1-s1).
    """

    def f(x):
        x = x.float()
        return 3 * x[..., 0] + 5 * x[..., 1] + 2 * x[..., 0] * x[..., 1]

    x = torch.tensor([1, 0])
    changed = indecater_changed_indices(x, 2)
    table = indecater_value_table(f(x), f(changed), x, 2)
    assert torch.equal(table, torch.tensor([[0.0, 3.0], [3.0, 10.0]]))

    logits = torch.tensor([0.4, -1.1], requires_grad=True)
    log_probs = torch.stack([(-logits).sigmoid().log(), logits.sigmoid().log()], -1)
    (grad,) = torch.autograd.grad(indecater_surrogate(log_probs, table), logits)
    s = logits.detach().sigmoid()
    torch.testing.assert_close(grad, torch.stack([3 * s[0] * (1 - s[0]), 7 * s[1] * (1 - s[1])]))


def test_closed_form_logit_gradient_is_the_surrogates_gradient():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 5, requires_grad=True)
    table = torch.randn(4, 3, 5)
    (grad,) = torch.autograd.grad(indecater_surrogate(logits.log_softmax(-1), table), logits)
    torch.testing.assert_close(indecater_logit_gradient(logits, table), grad)


def test_value_table_of_categoricals_matches_a_loop():
    torch.manual_seed(1)
    d, k = 3, 4
    weights = torch.randn(d, k)

    def f(x):
        return torch.nn.functional.one_hot(x, k).float().mul(weights).sum((-1, -2)).pow(2)

    index = torch.randint(0, k, (5, d))
    table = indecater_value_table(f(index), f(indecater_changed_indices(index, k)), index, k)
    for n, i, j in itertools.product(range(5), range(d), range(k)):
        x = index[n].clone()
        x[i] = j
        torch.testing.assert_close(table[n, i, j], f(x))


def test_reference_estimator_is_unbiased_and_counts_its_evaluations():
    """z-test of the reference implementation against the exact gradient (enumeration of
    4^3 values) of a non-additive f, and its cost N (1 + D(K - 1))."""
    torch.manual_seed(2)
    d, k, n, draws = 3, 4, 10, 200
    weights = torch.randn(d, k)

    def f(x):
        return torch.nn.functional.one_hot(x, k).float().mul(weights).sum((-1, -2)).pow(2)

    logits = torch.randn(d, k, requires_grad=True)
    probs = logits.softmax(-1)
    expectation = sum(
        probs[torch.arange(d), torch.tensor(x)].prod() * f(torch.tensor(x))
        for x in itertools.product(range(k), repeat=d)
    )
    (exact,) = torch.autograd.grad(expectation, logits)
    sampler = torch.distributions.Categorical(logits=logits.detach())
    estimates = []
    for _ in range(draws):
        grad, evaluations = indecater_gradient(f, logits.detach(), sampler.sample((n,)))
        estimates.append(grad)
    assert evaluations == n * (1 + d * (k - 1))
    estimates = torch.stack(estimates)
    z = (estimates.mean(0) - exact) / (estimates.std(0) / draws**0.5)
    assert z.abs().max() < 4.5
    # and it has the power to see a 10% bias in the largest component
    largest = exact.abs().argmax()
    biased = estimates.flatten(1)[:, largest] * 1.1
    se = estimates.flatten(1)[:, largest].std() / draws**0.5
    assert ((biased.mean() - exact.flatten()[largest]) / se).abs() > 4.5


def test_one_category_is_refused():
    with pytest.raises(ValueError, match="at least 2 categories"):
        indecater_changed_indices(torch.zeros(3, dtype=torch.long), 1)
