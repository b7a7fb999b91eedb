r"""IndeCateR: the CatLog-derivative trick for independent categorical variables.

For :math:`D` independent categorical variables :math:`X = (X_1, \dots, X_D)`, each
:math:`X_d \sim p_{\theta, d}` over :math:`K` values,

.. math::

    \partial_\theta\, \mathbb E_{p_\theta}[f(X)]
    = \sum_{d=1}^D \mathbb E_{X_{-d}}\Big[\sum_{k=1}^K \partial_\theta p_{\theta,d}(k)\,
      f(X_{-d}, X_d = k)\Big],

where :math:`X_{-d}` are the other variables: each variable is summed out exactly, the
others are sampled. With :math:`N` samples :math:`x^{(1)}, \dots, x^{(N)}` of :math:`X`,

.. math::

    \hat g = \frac 1N \sum_{n=1}^N \sum_{d=1}^D \sum_{k=1}^K
        \partial_\theta p_{\theta,d}(k)\, f\big(x^{(n)}_{-d}, X_d = k\big),

unbiased, and a Rao-Blackwellisation of REINFORCE variable by variable. It needs no
baseline: :math:`\sum_k \partial_\theta p_{\theta,d}(k) = 0`, so a constant added to
:math:`f` changes nothing. In logits :math:`\ell_d` (:math:`p_d = \mathrm{softmax}(\ell_d)`)
the estimate for one sample is

.. math::

    \hat g_{\ell_{d,j}} = p_d(j)\Big(F_{d,j} - \sum_k p_d(k)\, F_{d,k}\Big), \qquad
    F_{d,k} = f(x_{-d}, X_d = k).

A Bernoulli variable is the case :math:`K = 2` (:math:`p(1) = \sigma(\ell)`).

**Cost.** The table :math:`F` has :math:`DK` entries per sample, but the entry
:math:`k = x_d` of every row is :math:`f(x)` itself, so :math:`1 + D(K - 1)` evaluations
of :math:`f` per sample suffice (the paper's code evaluates all :math:`DK`):
:func:`indecater_changed_indices` lists the :math:`D(K-1)` changed values and
:func:`indecater_value_table` fills the table from their evaluations and :math:`f(x)`.

Reference: L. De Smet, E. Sansone, P. Zuidberg Dos Martires (2023), *Differentiable
Sampling of Categorical Distributions Using the CatLog-Derivative Trick*, NeurIPS
(arXiv:2311.12569); official code ``ML-KULeuven/catlog``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "indecater_changed_indices",
    "indecater_gradient",
    "indecater_logit_gradient",
    "indecater_surrogate",
    "indecater_value_table",
]


def _check_categories(num_categories: int) -> None:
    if num_categories < 2:
        raise ValueError(f"IndeCateR needs at least 2 categories, got {num_categories}")


def indecater_changed_indices(index: Tensor, num_categories: int) -> Tensor:
    r"""The :math:`S = D(K-1)` values that differ from a sample in one variable.

    :param index: the sample, category indices of shape ``(..., D)``.
    :param num_categories: :math:`K`.
    :returns: shape ``(S, ...,  D)``: slot :math:`s = d(K-1) + r - 1` (:math:`1 \le r < K`)
        is ``index`` with variable :math:`d` set to :math:`(x_d + r) \bmod K`.
    """
    _check_categories(num_categories)
    d = index.shape[-1]
    shifts = torch.arange(1, num_categories, device=index.device)  # (K-1,)
    # (D, K-1, D): row d shifts variable d by r
    step = torch.eye(d, dtype=index.dtype, device=index.device)[:, None, :] * shifts[:, None]
    step = step.reshape(d * (num_categories - 1), *(1,) * (index.dim() - 1), d)
    return (index + step) % num_categories


def indecater_value_table(
    base_signal: Tensor, changed_signals: Tensor, index: Tensor, num_categories: int
) -> Tensor:
    r"""The table :math:`F_{d,k} = f(x_{-d}, X_d = k)`, detached.

    :param base_signal: :math:`f(x)`, shape ``(...)``.
    :param changed_signals: :math:`f` at the values of :func:`indecater_changed_indices`,
        shape ``(S, ...)``.
    :param index: :math:`x`, shape ``(..., D)``.
    :returns: shape ``(..., D, K)``.
    """
    _check_categories(num_categories)
    d = index.shape[-1]
    batch = index.shape[:-1]
    changed = changed_signals.detach().expand((d * (num_categories - 1),) + batch)
    changed = changed.reshape((d, num_categories - 1) + batch).movedim(0, -1).movedim(0, -1)
    base = base_signal.detach().expand(batch)[..., None, None].expand(batch + (d, 1))
    by_shift = torch.cat([base, changed], -1)  # (..., D, K): entry r holds k = x_d + r
    k = torch.arange(num_categories, device=index.device)
    shift = (k - index.unsqueeze(-1)) % num_categories
    return by_shift.gather(-1, shift)


def indecater_surrogate(log_probs: Tensor, table: Tensor) -> Tensor:
    r""":math:`\sum p_{\theta,d}(k)\, F_{d,k}` summed over every variable and value: its
    gradient is the IndeCateR estimate.

    :param log_probs: :math:`\log p_{\theta,d}(k)`, shape ``(..., D, K)``, differentiable.
    :param table: :math:`F`, broadcastable to ``log_probs`` (detached here).
    """
    return (log_probs.exp() * table.detach()).sum()


def indecater_logit_gradient(logits: Tensor, table: Tensor) -> Tensor:
    r"""The estimate in closed form, w.r.t. the logits :math:`\ell` of
    :math:`p_d = \mathrm{softmax}(\ell_d)`: :math:`p_d(j)(F_{d,j} - \sum_k p_d(k) F_{d,k})`.

    :param logits: shape ``(..., D, K)``.
    :param table: :math:`F`, the same shape.
    """
    probs = logits.detach().softmax(-1)
    table = table.detach()
    return probs * (table - (probs * table).sum(-1, keepdim=True))


def indecater_gradient(
    f: Callable[[Tensor], Tensor], logits: Tensor, samples: Tensor
) -> tuple[Tensor, int]:
    r"""Reference implementation: the IndeCateR estimate of :math:`\partial_\ell\,
    \mathbb E[f(X)]` from ``N`` samples, and the number of evaluations of ``f`` it used.

    :param f: maps category indices ``(..., D)`` to values ``(...)``; called once on a
        batch of ``N (1 + D(K-1))`` points.
    :param logits: :math:`\ell`, shape ``(D, K)``.
    :param samples: :math:`x^{(n)}`, category indices of shape ``(N, D)``.
    :returns: the estimate, shape ``(D, K)`` (the mean over samples), and
        ``N (1 + D(K - 1))``.
    """
    num_categories = logits.shape[-1]
    changed = indecater_changed_indices(samples, num_categories)  # (S, N, D)
    points = torch.cat([samples.unsqueeze(0), changed], 0)
    values = f(points)
    table = indecater_value_table(values[0], values[1:], samples, num_categories)  # (N, D, K)
    grad = indecater_logit_gradient(logits.expand_as(table), table).mean(0)
    return grad, points.shape[0] * points.shape[1]
