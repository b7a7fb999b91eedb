r"""RODEO: RLOO with control variates from discrete Stein operators (Shi et al., 2022).

A Markov chain with kernel :math:`P` that leaves :math:`q` invariant gives a Stein
operator :math:`(\mathcal A h)(x) = \mathbb E_{y \sim P(x, \cdot)}[h(y)] - h(x)` with
:math:`\mathbb E_q[(\mathcal A h)(x)] = 0` for every function :math:`h`. For a factorised
Bernoulli :math:`q(x \mid \eta)` on :math:`\{0, 1\}^D`, :math:`\theta = \sigma(\eta)`, the
random-scan Gibbs chain gives

.. math::

    (\mathcal A h)(x) = \frac 1D \sum_{i=1}^D q(\neg x_i)\,\big[h(x^{(i)}) - h(x)\big],
    \qquad q(\neg x_i) = \theta_i (1 - x_i) + (1 - \theta_i)\, x_i,

where :math:`x^{(i)}` flips coordinate :math:`i`: :math:`D` neighbours and no extra
evaluation of :math:`f`. With :math:`K \ge 2` samples, signals :math:`f_k`, value gradients
:math:`g_k = \nabla_x f(x_k)` and score :math:`s(x) = x - \theta`, RODEO is

.. math::

    \hat g = \frac 1K \sum_k \Big[\Big(f_k - \frac{1}{K-1}\sum_{j \ne k}
        \big(f_j + \alpha\, (\mathcal A h^{0}_j)(x_j)\big)\Big) s(x_k)
        + \beta\, \big(\mathcal A [h^{1}_k\, s]\big)(x_k)\Big],

unbiased because :math:`h_k = (h^0_k, h^1_k)` reads only the other samples:

.. math::

    h_k(y) = \frac{1}{K-1} \sum_{j \ne k}
        \mathrm{NN}_\phi\big(g_j^\top (y - x_j),\; f_j\big) \in \mathbb R^2,

a learned function of the first-order Taylor expansion of :math:`f` around :math:`x_j`
(the official code's ``discrete_stein_avg`` for :math:`K = 2` and
``discrete_stein_output_avg`` for :math:`K > 2`, which coincide at :math:`K = 2`).
:math:`\alpha, \beta` start at 0 (RLOO) and, with :math:`\phi`, are fitted by minimising
the single-sample estimate of :math:`\mathbb E[\hat g^2]`. The neighbour terms are
computed in closed form (:math:`g_j^\top (x^{(i)} - x_j) = g_j^\top (x - x_j) +
g_{j,i} (1 - 2 x_i)`), so no :math:`D \times D` tensor is built.

Cost. :math:`h_k` is a nonlinear network averaged over the other samples, so computed pair
by pair it takes :math:`K (K-1)(D+1)` network evaluations per batch element: memory and
time grow with :math:`K^2`. Every point where :math:`h_k` is read lies in
:math:`\{0, 1\}^D`, so when :math:`2^D` is small (a Bernoulli per plate element has
:math:`D = 1`) the sums :math:`S(y) = \sum_j \mathrm{NN}(g_j^\top (y - x_j), f_j)` over
those :math:`2^D` points give every :math:`h_k(y) = (S(y) - \mathrm{NN}(g_k^\top(y - x_k),
f_k))/(K-1)` in :math:`O(K\, 2^D)`; the cheaper of the two is used (:func:`enumerates`).
For wide event blocks (a VAE's :math:`D = 200`) the :math:`K^2` cost is inherent.

Reference: J. Shi, Y. Zhou, J. Hwang, M. K. Titsias, L. Mackey (2022), *Gradient
Estimation with Discrete Stein Operators*, NeurIPS (arXiv:2202.09497); official code
``thjashin/rodeo``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pyro_discrete.estimators.double_cv import leave_one_out_mean

__all__ = [
    "enumerates",
    "gibbs_stein",
    "gibbs_stein_score",
    "pairwise_evaluations",
    "rodeo_logit_gradient",
]


def _flip_probability(value: Tensor, probs: Tensor) -> Tensor:
    return probs * (1 - value) + (1 - probs) * value


def gibbs_stein(h_value: Tensor, h_neighbours: Tensor, value: Tensor, probs: Tensor) -> Tensor:
    r"""The Gibbs Stein operator :math:`(\mathcal A h)(x)` for a scalar function :math:`h`.

    :param h_value: :math:`h(x)`, shape ``(...)``.
    :param h_neighbours: :math:`h(x^{(i)})` for each flipped coordinate, ``(..., D)``.
    :param value: :math:`x \in \{0, 1\}^D`, ``(..., D)``.
    :param probs: :math:`\theta`, broadcastable to ``value``.
    :returns: shape ``(...)``; its expectation under :math:`q` is zero for every :math:`h`.
    """
    weight = _flip_probability(value, probs)
    return (weight * (h_neighbours - h_value.unsqueeze(-1))).mean(-1)


def gibbs_stein_score(
    h_value: Tensor, h_neighbours: Tensor, value: Tensor, probs: Tensor
) -> Tensor:
    r""":math:`(\mathcal A [h\, s])(x)` for :math:`s(y) = y - \theta`: a mean-zero vector
    control variate for the score-function term, shaped like ``value``.

    :math:`s(x^{(i)})` differs from :math:`s(x)` only in coordinate :math:`i`, by
    :math:`1 - 2x_i`, so the result is :math:`s(x)\,(\mathcal A h)(x) + \frac 1D\,
    q(\neg x)\,(1 - 2x)\, h(x^{(\cdot)})`.
    """
    weight = _flip_probability(value, probs)
    score = value - probs
    stein = gibbs_stein(h_value, h_neighbours, value, probs).unsqueeze(-1)
    return score * stein + weight * (1 - 2 * value) * h_neighbours / value.shape[-1]


def _canonical(t: Tensor, dim: int, event_ndim: int) -> Tensor:
    """``(K, M, D)``: samples first, other batch dims flattened, event dims flattened."""
    t = t.movedim(dim, 0)
    event = t.shape[t.dim() - event_ndim :]
    d = 1
    for size in event:
        d *= size
    return t.reshape(t.shape[0], -1, d)


#: neighbourhoods of at most this many coordinates may be enumerated (2**D points)
MAX_ENUMERATED_COORDINATES = 12


def enumerates(k: int, d: int) -> bool:
    r"""Whether :math:`h` is computed from sums over the :math:`2^D` points of
    :math:`\{0, 1\}^D` (``K 2^D + K (D + 1)`` network evaluations) rather than over the
    :math:`K (K - 1)` ordered pairs of samples (``K (K - 1)(D + 1)`` evaluations): whichever
    is cheaper. Both give the same :math:`h` (up to rounding)."""
    if d > MAX_ENUMERATED_COORDINATES:
        return False
    return 2**d + d + 1 < (k - 1) * (d + 1)


def pairwise_evaluations(k: int, m: int, d: int) -> int:
    """Network evaluations of the pairwise computation (``K (K-1) M (D+1)``); 0 when the
    enumerated one is used."""
    return 0 if enumerates(k, d) else k * (k - 1) * m * (d + 1)


def _control_values_pairwise(
    control: Callable[[Tensor], Tensor], f: Tensor, x: Tensor, g: Tensor
) -> tuple[Tensor, Tensor]:
    """``h_k`` at ``x_k`` ``(K, M, 2)`` and at its neighbours ``(K, M, D, 2)``: the network
    evaluated at every ordered pair ``(k, j != k)``."""
    k = x.shape[0]
    # the K (K - 1) ordered pairs (k, j != k), k-major
    own, other = (~torch.eye(k, dtype=torch.bool, device=x.device)).nonzero(as_tuple=True)
    x_k, g_j = x[own], g[other]
    taylor_x = (g_j * (x_k - x[other])).sum(-1)  # g_j . (x_k - x_j): (P, M)
    taylor_nbr = taylor_x.unsqueeze(-1) + g_j * (1 - 2 * x_k)  # at x_k^{(i)}: (P, M, D)
    taylor = torch.cat([taylor_x.unsqueeze(-1), taylor_nbr], -1)  # (P, M, D + 1)
    signal = f[other].unsqueeze(-1).expand_as(taylor)
    out = control(torch.stack([taylor, signal], -1))  # (P, M, D + 1, 2)
    h = out.reshape((k, k - 1) + out.shape[1:]).mean(1)
    return h[:, :, 0], h[:, :, 1:]


def _control_values_enumerated(
    control: Callable[[Tensor], Tensor], f: Tensor, x: Tensor, g: Tensor
) -> tuple[Tensor, Tensor]:
    r"""The same ``h`` from sums: every point :math:`y` at which :math:`h_k` is needed
    (:math:`x_k` and its one-flip neighbours) lies in :math:`\{0, 1\}^D`, so
    :math:`S(y) = \sum_j \mathrm{NN}(g_j^\top (y - x_j), f_j)` over all :math:`2^D` points
    (per batch element) gives :math:`h_k(y) = (S(y) - \mathrm{NN}(g_k^\top (y - x_k),
    f_k)) / (K - 1)`: linear in :math:`K`. The sum is accumulated in double precision so
    that removing the own term loses nothing."""
    k, m, d = x.shape
    bits = 2 ** torch.arange(d, device=x.device)
    points = ((torch.arange(2**d, device=x.device).unsqueeze(-1) // bits) % 2).to(x.dtype)
    centre = (g * x).sum(-1)  # g_j . x_j: (K, M)
    taylor = torch.einsum("ud,kmd->ukm", points, g) - centre  # g_j . (y_u - x_j): (U, K, M)
    signal = f.unsqueeze(0).expand_as(taylor)
    total = control(torch.stack([taylor, signal], -1)).double().sum(1)  # S(y_u): (U, M, 2)
    # which point is x_k, and which its neighbour flipping coordinate i
    code = (x.long() * bits).sum(-1, keepdim=True)  # (K, M, 1)
    flips = code + (1 - 2 * x.long()) * bits  # (K, M, D)
    codes = torch.cat([code, flips], -1)  # (K, M, D + 1)
    rows = codes * m + torch.arange(m, device=x.device).view(1, m, 1)
    at_points = total.reshape(-1, 2)[rows]  # (K, M, D + 1, 2)
    own_taylor = torch.cat([torch.zeros_like(centre).unsqueeze(-1), g * (1 - 2 * x)], -1)
    own_signal = f.unsqueeze(-1).expand_as(own_taylor)
    own = control(torch.stack([own_taylor, own_signal], -1)).double()  # (K, M, D + 1, 2)
    h = ((at_points - own) / (k - 1)).to(x.dtype)
    return h[:, :, 0], h[:, :, 1:]


def _control_values(
    control: Callable[[Tensor], Tensor], f: Tensor, x: Tensor, g: Tensor, method: str = "auto"
) -> tuple[Tensor, Tensor]:
    """``h_k`` at ``x_k`` ``(K, M, 2)`` and at its neighbours ``(K, M, D, 2)``."""
    if method == "auto":
        method = "enumerate" if enumerates(x.shape[0], x.shape[-1]) else "pairwise"
    if method == "enumerate":
        return _control_values_enumerated(control, f, x, g)
    if method == "pairwise":
        return _control_values_pairwise(control, f, x, g)
    raise ValueError(f"RODEO: method must be 'auto', 'enumerate' or 'pairwise', got {method!r}")


def rodeo_logit_gradient(
    signal: Tensor,
    value: Tensor,
    probs: Tensor,
    value_grad: Tensor,
    control: Callable[[Tensor], Tensor],
    alpha: Tensor | float,
    beta: Tensor | float,
    dim: int,
    event_ndim: int = 0,
    method: str = "auto",
) -> Tensor:
    r"""Per-sample RODEO estimates of :math:`\partial_\eta \mathbb E[f(x)]` for Bernoulli
    logits :math:`\eta`; their mean over ``dim`` is :math:`\hat g`.

    :param signal: :math:`f_k`, broadcastable to ``value`` (batch shape plus singleton
        event dims); detached.
    :param value: :math:`x_k \in \{0, 1\}`; samples along ``dim``; each batch element's
        event block (``event_ndim`` trailing dims) is one Stein neighbourhood.
    :param probs: :math:`\theta` (per sample when the logits differ between samples).
    :param value_grad: :math:`g_k = \nabla_x f(x_k)`, shaped like ``value``; detached.
    :param control: :math:`\mathrm{NN}_\phi`, mapping features ``(..., 2)`` (a Taylor term
        and a signal) to ``(..., 2)`` (:math:`h^0, h^1`).
    :param alpha: scale of the Stein control variate inside the leave-one-out baseline.
    :param beta: scale of the Stein control variate for the score term.
    :param dim: the (negative) sample dim of ``value``.
    :param event_ndim: number of trailing event dims of ``value``.
    :param method: how :math:`h` is computed: ``"pairwise"`` (the network at all
        :math:`K (K-1)` ordered pairs of samples, memory and time :math:`O(K^2 D)`),
        ``"enumerate"`` (from sums over the :math:`2^D` points of a neighbourhood,
        :math:`O(K\, 2^D)`), or ``"auto"``: the cheaper (:func:`enumerates`). The results
        are equal up to rounding.
    :returns: a tensor shaped like ``value``, carrying gradients for ``alpha``, ``beta``
        and :math:`\phi` (for the variance objective), none for the model.
    """
    k = value.shape[dim]
    if k < 2:
        raise ValueError(f"RODEO needs at least 2 samples along dim {dim}, got {k}")
    value = value.detach()
    full = value.shape
    probs = probs.detach().expand(full)
    batch = full[: len(full) - event_ndim]
    f = signal.detach().reshape(signal.shape[: signal.dim() - event_ndim])
    f = _canonical(f.expand(batch).unsqueeze(-1), dim + event_ndim - 1, 1)[..., 0]
    x = _canonical(value, dim, event_ndim)
    theta = _canonical(probs, dim, event_ndim)
    g = _canonical(value_grad.detach().expand(full), dim, event_ndim)
    h_x, h_nbr = _control_values(control, f, x, g, method)
    stein_baseline = gibbs_stein(h_x[..., 0], h_nbr[..., 0], x, theta)
    stein_score = gibbs_stein_score(h_x[..., 1], h_nbr[..., 1], x, theta)
    baseline = leave_one_out_mean(f + alpha * stein_baseline, 0)
    grad = (f - baseline).unsqueeze(-1) * (x - theta) + beta * stein_score
    moved = value.movedim(dim, 0).shape
    return grad.reshape(moved).movedim(0, dim)
