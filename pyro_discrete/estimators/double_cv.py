r"""Double control variates: RLOO plus a Taylor control variate (Titsias & Shi, 2022).

With :math:`K \ge 2` independent samples :math:`x_1, \dots, x_K` of a factorised Bernoulli
:math:`q(x \mid \eta)`, :math:`\theta = \sigma(\eta)`, score
:math:`s(x) = \partial_\eta \log q(x) = x - \theta`, learning signals :math:`f_k = f(x_k)`
and value gradients :math:`g_k = \nabla_x f(x_k)` (of :math:`f` extended to real
:math:`x`; free, from the backward pass that trains the model), let
:math:`\bar g_{-k} = \frac{1}{K-1}\sum_{j \ne k} g_j` and

.. math::

    c_k = \alpha\, \bar g_{-k}^\top (x_k - \theta),

the first-order Taylor expansion of :math:`f` around the other samples, used as a second
("double") control variate on top of the leave-one-out baseline:

.. math::

    \hat g = \frac 1K \sum_k \Big[\Big(f_k - c_k - \frac{1}{K-1}\sum_{j \ne k}(f_j - c_j)\Big)
        s(x_k) + \alpha\, \bar g_{-k} \odot \theta (1 - \theta)\Big].

The last term puts back :math:`\mathbb E[c_k\, s(x_k) \mid x_{j \ne k}]`
(:math:`\mathrm{Cov}(x) = \mathrm{diag}\,\theta(1 - \theta)`), so the estimate is unbiased
for every :math:`\alpha`; :math:`c_j` in the baseline of :math:`x_k` has mean zero because
:math:`x_j` is independent of :math:`x_k` and centred. :math:`\alpha = 0` is RLOO;
:math:`\alpha = 1` makes the estimate exact for linear :math:`f` (then :math:`f_k - c_k`
does not depend on :math:`x_k`). The paper's code (whose :math:`\alpha` is minus this one)
starts at :math:`\alpha = 0` and learns it by minimising the single-sample
estimate of :math:`\mathbb E[\hat g^2]`. Here the correction uses :math:`\bar g_{-k}` and
each sample's own :math:`\theta_k`, so that samples whose logits differ (a layer below
another sampled layer) stay unbiased; with shared logits the sum over :math:`k` equals
the paper's :math:`\alpha \bar g \odot \theta(1-\theta)`.

Reference: M. K. Titsias, J. Shi (2022), *Double Control Variates for Gradient Estimation
in Discrete Latent Variable Models*, AISTATS (arXiv:2111.05300); official code
``thjashin/double-cv``.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["double_cv_logit_gradient", "leave_one_out_mean"]


def leave_one_out_mean(x: Tensor, dim: int) -> Tensor:
    r""":math:`\frac{1}{K-1}\sum_{j \ne k} x_j` along ``dim`` (``K >= 2`` entries)."""
    k = x.shape[dim]
    if k < 2:
        raise ValueError(f"leave-one-out averages need at least 2 samples along dim {dim}, got {k}")
    return (x.sum(dim, keepdim=True) - x) / (k - 1)


def _dot_event(a: Tensor, b: Tensor, event_ndim: int) -> Tensor:
    prod = a * b
    return prod.sum(tuple(range(-event_ndim, 0)), keepdim=True) if event_ndim else prod


def double_cv_logit_gradient(
    signal: Tensor,
    value: Tensor,
    probs: Tensor,
    value_grad: Tensor,
    alpha: Tensor | float,
    dim: int,
    event_ndim: int = 0,
) -> Tensor:
    r"""Per-sample double-CV estimates of :math:`\partial_\eta \mathbb E[f(x)]` for Bernoulli
    logits :math:`\eta`; their mean over ``dim`` is :math:`\hat g`.

    :param signal: :math:`f_k`, broadcastable to ``value`` (batch shape plus singleton
        event dims); detached.
    :param value: the samples :math:`x_k \in \{0, 1\}`, samples along ``dim``.
    :param probs: :math:`\theta` (per sample when the logits differ between samples).
    :param value_grad: :math:`g_k = \nabla_x f(x_k)`, shaped like ``value``; detached.
    :param alpha: the Taylor control variate's scale (a tensor carries its gradient, for
        the variance objective).
    :param dim: the (negative) sample dim of ``value``.
    :param event_ndim: trailing dims summed in :math:`\bar g_{-k}^\top (x_k - \theta)`.
    :returns: a tensor shaped like ``value``.

    >>> import torch
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    >>> f = torch.tensor([[2.0], [1.0]])
    >>> g = torch.zeros(2, 2)
    >>> double_cv_logit_gradient(f, x, torch.full((2, 2), 0.5), g, 0.7, dim=-2, event_ndim=1)
    tensor([[ 0.5000, -0.5000],
            [ 0.5000,  0.5000]])
    """
    signal, value_grad, value = signal.detach(), value_grad.detach(), value.detach()
    probs = probs.detach()
    score = value - probs
    others = leave_one_out_mean(value_grad, dim)
    taylor = alpha * _dot_event(others, score, event_ndim)
    controlled = signal - taylor
    baseline = leave_one_out_mean(controlled, dim)
    return (controlled - baseline) * score + alpha * others * probs * (1 - probs)
