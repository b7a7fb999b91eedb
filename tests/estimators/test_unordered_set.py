"""The unordered-set estimator's pure functions against brute-force enumeration of sets."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pyro_discrete import estimators as E


def _plackett_luce_set_prob(p: list[float], chosen: list[int], removed: list[int]) -> float:
    """P(the first |chosen| draws without replacement from D \\ removed are `chosen`), by
    summing over every order."""
    total = 0.0
    for order in itertools.permutations(chosen):
        used, prob = sum(p[r] for r in removed), 1.0
        for e in order:
            prob *= p[e] / (1 - used)
            used += p[e]
        total += prob
    return total


def _brute_force(p, chosen):
    k = len(chosen)
    ps = _plackett_luce_set_prob(p, chosen, [])
    p1 = [_plackett_luce_set_prob(p, [x for x in chosen if x != s], [s]) for s in chosen]
    p2 = [
        [
            p1[i]
            if i == j
            else _plackett_luce_set_prob(
                p, [x for x in chosen if x not in (chosen[i], chosen[j])], [chosen[i], chosen[j]]
            )
            for j in range(k)
        ]
        for i in range(k)
    ]
    f64 = torch.float64
    return torch.tensor(ps, dtype=f64), torch.tensor(p1, dtype=f64), torch.tensor(p2, dtype=f64)


@pytest.mark.parametrize("method", ["exact", "integrate"])
@pytest.mark.parametrize(
    "n,k,scale", [(5, 2, 1.0), (6, 3, 2.0), (6, 4, 0.5), (8, 5, 3.0), (4, 4, 1.0)]
)
def test_set_probabilities_match_plackett_luce_enumeration(method, n, k, scale):
    g = torch.Generator().manual_seed(n * 10 + k)
    log_p_all = torch.log_softmax(scale * torch.randn(n, generator=g, dtype=torch.float64), -1)
    chosen = torch.randperm(n, generator=g)[:k].tolist()
    rest = [i for i in range(n) if i not in chosen]
    log_rest = log_p_all[rest].logsumexp(-1) if rest else torch.tensor(-math.inf).double()
    ps, p1, p2 = _brute_force(log_p_all.exp().tolist(), chosen)
    log_ps, log_p1, log_p2 = E.unordered_set_log_probs(log_p_all[chosen], log_rest, method)
    torch.testing.assert_close(log_ps.exp(), ps.double(), rtol=1e-9, atol=0)
    torch.testing.assert_close(log_p1.exp(), p1.double(), rtol=1e-9, atol=0)
    torch.testing.assert_close(log_p2.exp(), p2.double(), rtol=1e-9, atol=0)
    # the weights p(s) R(S, s) sum to one (p(S) = sum_s p(s) p^{D\s}(S\s))
    log_w = E.unordered_set_weights(log_p_all[chosen], log_ps, log_p1)
    torch.testing.assert_close(log_w.exp().sum(), torch.tensor(1.0).double())


def test_integration_is_accurate_in_float32_and_where_the_set_holds_nearly_all_mass():
    torch.manual_seed(0)
    logits = torch.randn(200, 7) * 3
    logits[:50, :3] += 12.0  # the first three hold all but ~1e-5 of the mass
    log_p = torch.log_softmax(logits, -1)
    log_rest = log_p[:, 3:].logsumexp(-1)
    exact = E.unordered_set_log_probs(log_p[:, :3].double(), log_rest.double(), "exact")
    approx = E.unordered_set_log_probs(log_p[:, :3], log_rest, "integrate")
    for a, e in zip(approx, exact, strict=True):
        torch.testing.assert_close(a.double(), e, rtol=0, atol=2e-5)


def test_bad_method():
    with pytest.raises(ValueError, match="method"):
        E.unordered_set_log_probs(torch.zeros(2), method="simpson")
    with pytest.raises(ValueError, match="k = 4"):
        E.gumbel_top_k(torch.zeros(3), 4)


def _set_frequencies(sets: torch.Tensor) -> dict:
    keys = [tuple(sorted(s)) for s in sets.tolist()]
    counts: dict = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return {key: c / len(keys) for key, c in counts.items()}


def _assert_set_law(frequencies, probabilities, n):
    assert set(frequencies) <= set(probabilities)
    for key, p in probabilities.items():
        se = math.sqrt(p * (1 - p) / n)
        assert abs(frequencies.get(key, 0.0) - p) < 5 * se + 1e-12, (key, frequencies.get(key), p)


def test_gumbel_top_k_draws_each_set_with_its_probability():
    torch.manual_seed(1)
    log_p = torch.log_softmax(torch.tensor([1.0, 0.2, -0.5, -1.5], dtype=torch.float64), -1)
    n = 100_000
    indices, perturbed = E.gumbel_top_k(log_p.expand(n, 4), 2)
    assert (indices[:, 0] != indices[:, 1]).all() and (perturbed[:, 0] >= perturbed[:, 1]).all()
    p = log_p.exp().tolist()
    probabilities = {
        s: _plackett_luce_set_prob(p, list(s), []) for s in itertools.combinations(range(4), 2)
    }
    _assert_set_law(_set_frequencies(indices), probabilities, n)


def test_stochastic_beam_search_samples_sequences_without_replacement():
    """Over a product of two 3-way categoricals (9 sequences): the set of 3 drawn is
    distributed as Gumbel-top-3 over the 9 joint values, and log_p is their log-mass."""
    torch.manual_seed(2)
    log_probs = torch.log_softmax(
        torch.tensor([[0.5, -0.3, 0.0], [1.0, -1.0, 0.2]], dtype=torch.float64), -1
    )
    n = 60_000
    sequences, log_p = E.stochastic_beam_search(log_probs.expand(n, 2, 3), 3)
    flat = sequences[..., 0] * 3 + sequences[..., 1]
    assert all(len(set(row)) == 3 for row in flat[:1000].tolist())
    joint = (log_probs[0].unsqueeze(-1) + log_probs[1]).reshape(9)
    torch.testing.assert_close(log_p, joint[flat])
    p = joint.exp().tolist()
    probabilities = {
        s: _plackett_luce_set_prob(p, list(s), []) for s in itertools.combinations(range(9), 3)
    }
    _assert_set_law(_set_frequencies(flat), probabilities, n)
    # a domain smaller than k: every sequence, once
    sequences, _ = E.stochastic_beam_search(log_probs[:1].expand(5, 1, 3), 4)
    assert sequences.shape == (5, 3, 1)
    assert sorted(sequences[0, :, 0].tolist()) == [0, 1, 2]


def _estimates(logits, f, k, n, use_baseline=True):
    """n independent unordered-set estimates of d/dlogits E[f] (one per row)."""
    rows = logits.expand(n, -1).clone().requires_grad_()
    log_q_all = torch.log_softmax(rows, -1)
    indices, _ = E.gumbel_top_k(log_q_all.detach(), k)
    log_p = log_q_all.detach().gather(-1, indices)
    taken = torch.zeros_like(rows, dtype=torch.bool).scatter(-1, indices, True)
    log_rest = log_q_all.detach().masked_fill(taken, -math.inf).logsumexp(-1)
    log_ps, log_p1, log_p2 = E.unordered_set_log_probs(log_p, log_rest)
    log_w = E.unordered_set_weights(log_p, log_ps, log_p1)
    signal = f[indices]
    baseline = E.unordered_set_baseline(log_p, log_p1, log_p2, signal) if use_baseline else 0.0
    surrogate = E.unordered_set_surrogate(log_q_all.gather(-1, indices), log_w, signal, baseline)
    (grad,) = torch.autograd.grad(surrogate, rows)
    value = (log_w.exp() * signal).sum(-1)
    return grad, value


@pytest.mark.parametrize("k", [2, 3, 5])  # k = 5: the integrated set probabilities
def test_estimator_is_unbiased(k):
    torch.manual_seed(3)
    logits = torch.tensor([1.0, -0.5, 0.3, -2.0, 0.8, 0.0], dtype=torch.float64)
    f = torch.tensor([3.0, -1.0, 2.0, 5.0, 0.5, -2.0], dtype=torch.float64)
    x = logits.clone().requires_grad_()
    (exact,) = torch.autograd.grad((torch.softmax(x, -1) * f).sum(), x)
    n = 20_000 if k < 5 else 5_000
    grad, value = _estimates(logits, f, k, n)
    z = (grad.mean(0) - exact) / (grad.std(0) / math.sqrt(n))
    assert z.abs().max() < 4.5, z
    expected = (torch.softmax(logits, -1) * f).sum()
    assert abs(value.mean() - expected) < 4.5 * value.std() / math.sqrt(n)
    # the z-test has power: a 10% bias on the gradient is seen
    assert ((1.1 * grad.mean(0) - exact) / (grad.std(0) / math.sqrt(n))).abs().max() > 4.5


def test_baseline_lowers_the_variance_and_a_full_set_is_exact():
    torch.manual_seed(4)
    logits = torch.tensor([1.0, -0.5, 0.3, -2.0, 0.8], dtype=torch.float64)
    f = torch.tensor([3.0, -1.0, 2.0, 5.0, 0.5], dtype=torch.float64) + 10.0
    with_baseline, _ = _estimates(logits, f, 3, 20_000)
    without, _ = _estimates(logits, f, 3, 20_000, use_baseline=False)
    assert with_baseline.var(0).sum() < 0.5 * without.var(0).sum()
    x = logits.clone().requires_grad_()
    (exact,) = torch.autograd.grad((torch.softmax(x, -1) * f).sum(), x)
    full, _ = _estimates(logits, f, 5, 10)
    torch.testing.assert_close(full, exact.expand_as(full))
