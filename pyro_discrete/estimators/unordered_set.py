r"""The unordered-set estimator (Kool, van Hoof, Welling, 2020). Unbiased.

Draw :math:`S = \{s_1, \dots, s_k\}`, :math:`k` distinct values, without replacement from
:math:`p_\theta` (Gumbel-top-:math:`k`: the :math:`k` largest of
:math:`\log p(s) + G_s`, :math:`G_s \sim \mathrm{Gumbel}(0, 1)`; for a product of
categoricals by stochastic beam search, Kool et al. 2019). With :math:`p(S)` the probability
of the unordered set and :math:`p^{D \setminus A}(S \setminus A)` that of drawing
:math:`S \setminus A` first from the domain without :math:`A` (renormalised),

.. math::

    R(S, s) = \frac{p^{D\setminus\{s\}}(S\setminus\{s\})}{p(S)}, \qquad
    w_s = p(s)\,R(S, s) \quad \Big(\textstyle\sum_{s\in S} w_s = 1\Big),

    \hat g = \sum_{s\in S} w_s\,\nabla_\theta \log p_\theta(s)\,
             \big(f(s) - B_s\big), \qquad
    B_s = \sum_{s'\in S} p(s')\, \frac{p^{D\setminus\{s, s'\}}(S\setminus\{s, s'\})}
                                   {p^{D\setminus\{s\}}(S\setminus\{s\})}\, f(s'),

with the :math:`s' = s` ratio equal to 1 (Theorem 4 of the paper: the built-in baseline keeps
the estimate unbiased). :math:`\sum_s w_s f(s)` is an unbiased estimate of
:math:`\mathbb E[f]` and :math:`\sum_s w_s \nabla f(s)` of :math:`\mathbb E[\nabla f]`.

The set probabilities. Let :math:`a_s = p(s) / p(D \setminus S)`; then (appendix of the
paper)

.. math::

    p^{D\setminus A}(S \setminus A) = \int_0^1 \prod_{s \in S\setminus A}
    \big(1 - u^{a_s}\big)\, du,

which :func:`unordered_set_log_probs` integrates numerically (trapezoid rule in
:math:`y = \log(-\log u)`, where the integrand is smooth and decays doubly exponentially,
so the rule converges geometrically), or computes exactly by summing the Plackett-Luce
probabilities of the orderings with a dynamic programme over subsets
(:math:`O(2^k k)` per leave-out set; used for small :math:`k`).

References:

- W. Kool, H. van Hoof, M. Welling (2020), *Estimating Gradients for Discrete Random
  Variables by Sampling without Replacement*, ICLR; official code
  ``wouterkool/estimating-gradients-without-replacement``.
- W. Kool, H. van Hoof, M. Welling (2019), *Stochastic Beams and Where to Find Them: The
  Gumbel-Top-k Trick for Sampling Sequences Without Replacement*, ICML.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pyro_discrete.distributions import functional as fn

__all__ = [
    "gumbel_top_k",
    "stochastic_beam_search",
    "event_without_replacement",
    "unordered_set_log_probs",
    "unordered_set_weights",
    "unordered_set_baseline",
    "unordered_set_surrogate",
]

#: sets up to this size get the exact dynamic programme under ``method="auto"``
EXACT_MAX_K = 4


def _log1mexp(x: Tensor) -> Tensor:
    # log(1 - exp(x)) for x <= 0; -inf at x = 0
    x = x.clamp(max=0.0)
    return torch.where(
        x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x))
    )


def gumbel_top_k(log_probs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    r"""``k`` distinct indices drawn without replacement from :math:`\mathrm{softmax}`
    (last dim), as the :math:`k` largest perturbed log-probabilities, in decreasing order.

    Returns ``(indices, perturbed)``, both ``(..., k)``; ``k`` must not exceed the number
    of categories.
    """
    n = log_probs.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"gumbel_top_k: k = {k} must be between 1 and the {n} categories")
    perturbed = fn.gumbel_sample(log_probs, fn.uniform_like(log_probs))
    top, indices = perturbed.topk(k, dim=-1)
    return indices, top


def _gumbel_below(log_probs: Tensor, maximum: Tensor) -> Tensor:
    # Gumbels with locations log_probs (children, last dim) conditioned on their maximum
    # being `maximum` (the parent's perturbed value): Kool et al. 2019, eq. (23), in the
    # stable form of the official code: T - log(1 + exp(T - g + log(1 - exp(g - Z)))).
    g = fn.gumbel_sample(log_probs, fn.uniform_like(log_probs)) + log_probs.logsumexp(
        -1, keepdim=True
    )
    z = g.max(-1, keepdim=True).values
    t = maximum.unsqueeze(-1)
    v = t - g + _log1mexp(g - z)
    return t - F.softplus(v)


def stochastic_beam_search(log_probs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    r"""``min(k, n^d)`` distinct sequences drawn without replacement from the product
    distribution :math:`\prod_i p_i(x_i)` given by ``log_probs`` ``(..., d, n)`` (each row
    normalised), by stochastic beam search: the result is distributed as Gumbel-top-:math:`k`
    over all :math:`n^d` sequences.

    Returns ``(sequences, log_p)``: indices ``(..., k', d)`` and the sequences'
    log-probabilities ``(..., k')``, in decreasing order of their perturbed values.
    """
    d, n = log_probs.shape[-2:]
    width = min(k, n)
    phi = log_probs[..., 0, :]
    perturbed = fn.gumbel_sample(phi, fn.uniform_like(phi))
    g_beam, first = perturbed.topk(width, dim=-1)
    phi_beam = phi.gather(-1, first)
    sequences = first.unsqueeze(-1)
    for i in range(1, d):
        phi_child = phi_beam.unsqueeze(-1) + log_probs[..., i, :].unsqueeze(-2)  # (..., b, n)
        g_child = _gumbel_below(phi_child, g_beam)
        width = min(k, width * n)
        g_beam, flat = g_child.flatten(-2).topk(width, dim=-1)
        parent, action = flat // n, flat % n
        phi_beam = phi_child.flatten(-2).gather(-1, flat)
        index = parent.unsqueeze(-1).expand(parent.shape + (i,))
        sequences = torch.cat([sequences.gather(-2, index), action.unsqueeze(-1)], -1)
    return sequences, phi_beam


def event_without_replacement(
    logits: Tensor, k: int, one_hot: bool, event_ndim: int
) -> tuple[Tensor, Tensor, Tensor]:
    r"""``min(k, |D|)`` distinct values of a Bernoulli or one-hot categorical *event* per
    batch element, drawn without replacement by :func:`stochastic_beam_search` over its
    elements (bits, or one-hot rows), with their log-probabilities and the mass left out.

    :param logits: batch + event shape; Bernoulli log-odds, or categorical logits (last dim).
    :param event_ndim: number of event dims (``to_event`` dims, plus the category dim for a
        one-hot site).
    :return: ``(values (batch, k', event), log_p (batch, k'), log_rest (batch))`` with
        ``log_rest`` :math:`= \log p(D \setminus S)` (``-inf`` when :math:`S = D`).
    """
    split = logits.dim() - event_ndim
    batch, event = logits.shape[:split], logits.shape[split:]
    if one_hot:
        log_probs = torch.log_softmax(logits, -1).reshape(batch + (-1, event[-1]))
    else:
        flat = logits.reshape(batch + (-1,))
        log_probs = torch.stack([F.logsigmoid(-flat), F.logsigmoid(flat)], -1)
    d, n = log_probs.shape[-2:]
    sequences, log_p = stochastic_beam_search(log_probs, k)
    size = sequences.shape[-2]
    if d * math.log(n) < 60 and size == n**d:
        log_rest = torch.full_like(log_p[..., 0], -math.inf)  # the whole domain
    elif d == 1:  # one categorical: add up the others exactly
        taken = F.one_hot(sequences[..., 0], n).sum(-2).bool()
        log_rest = log_probs[..., 0, :].masked_fill(taken, -math.inf).logsumexp(-1)
    else:
        log_rest = _log1mexp(log_p.logsumexp(-1))
    if one_hot:
        values = F.one_hot(sequences, n).to(logits.dtype)
    else:
        values = sequences.to(logits.dtype)
    return values.reshape(batch + (size,) + event), log_p, log_rest


# ---------------------------------------------------------------------------------------
# probabilities of the unordered set and of its leave-one-out / leave-two-out subsets
# ---------------------------------------------------------------------------------------


def _subset_log_mass(log_p: Tensor) -> list[Tensor]:
    # log p(U) for every subset U of the k elements, indexed by bitmask
    k = log_p.shape[-1]
    out = [torch.full_like(log_p[..., 0], -math.inf)]
    for mask in range(1, 2**k):
        low = (mask & -mask).bit_length() - 1
        out.append(torch.logaddexp(out[mask ^ (1 << low)], log_p[..., low]))
    return out


def _exact(log_p: Tensor, log_rest: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    k = log_p.shape[-1]
    full = 2**k - 1
    mass = _subset_log_mass(log_p)
    # 1 - p(U) = p(D \ S) + p(S \ U): a sum of positives, accurate when S holds most mass
    remaining = [torch.logaddexp(log_rest, mass[full ^ u]) for u in range(2**k)]

    def first_draws(removed: int) -> Tensor:
        # log P(the first |S \ removed| draws from D \ removed are S \ removed), by the
        # Plackett-Luce recursion over the element drawn last
        free = full ^ removed
        table = {0: torch.zeros_like(log_rest)}
        for a in range(1, 2**k):
            if a & ~free:
                continue
            terms = [
                table[a ^ (1 << x)] + log_p[..., x] - remaining[removed | (a ^ (1 << x))]
                for x in range(k)
                if a >> x & 1
            ]
            table[a] = torch.stack(terms, -1).logsumexp(-1)
        return table[free]

    log_ps = first_draws(0)
    log_p1 = torch.stack([first_draws(1 << i) for i in range(k)], -1)
    rows = []
    for i in range(k):
        row = [log_p1[..., i] if i == j else first_draws(1 << i | 1 << j) for j in range(k)]
        rows.append(torch.stack(row, -1))
    return log_ps, log_p1, torch.stack(rows, -2)


def _integrated(log_p: Tensor, log_rest: Tensor, step: float) -> tuple[Tensor, Tensor, Tensor]:
    # p^{D\A}(S\A) = int_R exp(y - e^y) prod_{s in S\A} (1 - exp(-a_s e^y)) dy,  u = exp(-e^y)
    # The integrand is below e^y, so [-40, log 50] loses < 1e-17 of any of these integrals;
    # relative to a tiny p(S) the lost tail is smaller still (it decays as e^{(m+1) y}).
    y = torch.arange(-40.0, math.log(50.0) + step, step, dtype=log_p.dtype, device=log_p.device)
    log_a = (log_p - log_rest.unsqueeze(-1)).unsqueeze(-1)  # (..., k, 1)
    # log(1 - exp(-a e^y)) for every element and grid point: (..., k, N)
    factor = torch.log(-torch.expm1(-torch.exp(log_a + y)))
    factor = factor.clamp(min=-1e4)  # a probability-0 element: keep the sums finite
    total = factor.sum(-2)  # (..., N)
    base = y - torch.exp(y) + math.log(step)
    log_ps = (base + total).logsumexp(-1)
    leave_one = total.unsqueeze(-2) - factor  # (..., k, N)
    log_p1 = (base + leave_one).logsumexp(-1)
    leave_two = leave_one.unsqueeze(-2) - factor.unsqueeze(-3)  # (..., k, k, N)
    log_p2 = (base + leave_two).logsumexp(-1)
    eye = torch.eye(log_p.shape[-1], dtype=torch.bool, device=log_p.device)
    log_p2 = torch.where(eye, log_p1.unsqueeze(-1).expand_as(log_p2), log_p2)
    return log_ps, log_p1, log_p2


def unordered_set_log_probs(
    log_p: Tensor,
    log_rest: Tensor | None = None,
    method: str = "auto",
    step: float = 0.25,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Log-probabilities of the unordered set and of its leave-out subsets.

    :param log_p: ``(..., k)`` normalised log-probabilities of the :math:`k` distinct
        sampled values.
    :param log_rest: ``(...)`` :math:`\log p(D \setminus S)`, the mass outside the set
        (``-inf`` when the set is the whole domain). Computed as
        :math:`\log(1 - \sum_s p(s))` when omitted; pass it when known, it is more accurate
        when the set holds nearly all the mass.
    :param method: ``"exact"`` (dynamic programme over subsets, :math:`O(k^2 2^k)`),
        ``"integrate"`` (trapezoid rule, step ``step`` in :math:`\log(-\log u)`) or
        ``"auto"`` (exact for :math:`k \le 4`).
    :return: ``(log p(S) (...), log p^{D\setminus s}(S\setminus s) (..., k),
        log p^{D\setminus\{s,s'\}}(S\setminus\{s,s'\}) (..., k, k))``, the last with
        :math:`\log p^{D\setminus s}(S\setminus s)` on its diagonal.
    """
    if log_rest is None:
        log_rest = _log1mexp(log_p.logsumexp(-1))
    k = log_p.shape[-1]
    if method == "auto":
        method = "exact" if k <= EXACT_MAX_K else "integrate"
    if method == "exact":
        return _exact(log_p, log_rest)
    if method == "integrate":
        # a set covering the domain (log_rest = -inf) gives a_s = inf and factors 1: p = 1
        return _integrated(log_p, log_rest, step)
    raise ValueError(f"method must be 'auto', 'exact' or 'integrate', got {method!r}")


# ---------------------------------------------------------------------------------------
# the estimator
# ---------------------------------------------------------------------------------------


def unordered_set_weights(log_p: Tensor, log_ps: Tensor, log_p1: Tensor) -> Tensor:
    r""":math:`\log w_s = \log p(s) + \log p^{D\setminus s}(S \setminus s) - \log p(S)`
    (``(..., k)``; the weights sum to 1 over the set)."""
    return log_p + log_p1 - log_ps.unsqueeze(-1)


def unordered_set_baseline(log_p: Tensor, log_p1: Tensor, log_p2: Tensor, signal: Tensor) -> Tensor:
    r"""The built-in baseline :math:`B_s = \sum_{s'} p(s')\,
    p^{D\setminus\{s,s'\}}(S\setminus\{s,s'\}) / p^{D\setminus s}(S\setminus s)\, f(s')`
    for every :math:`s` of the set (last dim), from the detached ``signal`` ``(..., k)``."""
    ratio = torch.exp(log_p.unsqueeze(-2) + log_p2 - log_p1.unsqueeze(-1))  # (..., k, k)
    return (ratio * signal.detach().unsqueeze(-2)).sum(-1)


def unordered_set_surrogate(
    log_q: Tensor, log_w: Tensor, signal: Tensor, baseline: Tensor | float = 0.0
) -> Tensor:
    r"""A scalar whose gradient is :math:`\sum_s w_s \nabla \log q(s)\,(f(s) - B_s)`,
    summed over every leading dim. ``log_q`` carries the gradient; the weights, the signal and
    the baseline are held constant."""
    coefficient = (log_w.exp() * (signal - baseline)).detach()
    return (coefficient * log_q).sum()
