r"""RELAX: a learned differentiable surrogate as a control variate (Grathwohl et al., 2018).

With :math:`z \sim p(z \mid \theta)`, :math:`b = H(z)` and
:math:`\tilde z \sim p(z \mid b, \theta)`,

.. math::

    \hat g = \big[f(b) - c_\phi(\tilde z)\big]\, \partial_\theta \log q(b \mid \theta)
             + \partial_\theta c_\phi(z) - \partial_\theta c_\phi(\tilde z),

unbiased for any differentiable :math:`c_\phi`. The control-variate parameters
:math:`\phi` are fitted by minimising the single-sample estimate of :math:`\mathbb E[\hat g^2]`
(for an unbiased estimator its gradient is that of the variance), which needs
:math:`\hat g` with its graph: a double backward. :math:`[f(b) - c_\phi(\tilde z)]` is a
constant in :math:`\theta`; forgetting that adds a spurious term and biases the estimate.

With :math:`c_\phi = r_\rho` alone (a learned network, no
:math:`\eta f(\sigma_\lambda(\cdot))` term) :math:`f` is used by value only and may be a
black box (the paper's surrogate for black-box :math:`f`; ``black_box=True`` of the
``relax`` adapter); it stays unbiased.

Here :math:`\theta` is the logits tensor of one discrete site; the caller chains
:math:`\hat g` into the network parameters.

Reference: W. Grathwohl, D. Choi, Y. Wu, G. Roeder, D. Duvenaud (2018),
*Backpropagation through the Void: Optimizing control variates for black-box gradient
estimation*.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["relax_logit_gradient", "relax_logit_gradients", "gradient_variance_loss"]


def relax_logit_gradient(
    logits: Tensor,
    score: Tensor,
    f_hard: Tensor,
    c_relaxed: Tensor,
    c_conditional: Tensor,
    create_graph: bool = False,
) -> Tensor:
    r"""RELAX's estimate of :math:`\partial_\ell \mathbb E[f(b)]` for the logits :math:`\ell`.

    :param logits: the site's logits (the tensor both relaxed evaluations were built from).
    :param score: :math:`\partial_\ell \log q(b)` (see
        :func:`~pyro_discrete.estimators.reinforce.logit_score`).
    :param f_hard: :math:`f(b)`, broadcastable to ``logits``.
    :param c_relaxed: :math:`c_\phi(z)`, a tensor whose sum depends on ``logits``
        through :math:`z`.
    :param c_conditional: :math:`c_\phi(\tilde z)`, likewise through :math:`\tilde z`.
    :param create_graph: keep the graph so that the result can be differentiated with
        respect to :math:`\phi` (the variance objective).
    :returns: a tensor shaped like ``logits``; it carries :math:`\phi`-gradients when
        ``create_graph`` is set and never needs a :math:`\theta`-gradient.

    >>> import torch
    >>> from pyro_discrete.distributions import functional as dfn
    >>> logits = torch.zeros(4, requires_grad=True)
    >>> u = torch.tensor([0.1, 0.4, 0.6, 0.9])
    >>> z = dfn.logistic_sample(logits, u); b = dfn.heaviside(z)
    >>> v = dfn.logistic_conditional_noise(logits, z, b)
    >>> zt = dfn.logistic_conditional_sample(logits, b, v)
    >>> f = lambda v: (v - 0.45) ** 2
    >>> g = relax_logit_gradient(logits, b - logits.sigmoid(), f(b),
    ...                          f(dfn.relax_bernoulli(z, 0.5)), f(dfn.relax_bernoulli(zt, 0.5)))
    >>> g.shape
    torch.Size([4])
    """
    (grad,) = relax_logit_gradients(
        [logits], [score], [f_hard], [c_relaxed], [c_conditional], create_graph
    )
    return grad


def relax_logit_gradients(
    logits: list[Tensor],
    scores: list[Tensor],
    f_hard: list[Tensor],
    c_relaxed: list[Tensor],
    c_conditional: list[Tensor],
    create_graph: bool = False,
) -> list[Tensor]:
    r""":func:`relax_logit_gradient` of several sites (one list entry each) with one backward
    pass for every site's reparameterised terms instead of one per site.

    Exact when site :math:`i`'s :math:`c_\phi(z_i)` and :math:`c_\phi(\tilde z_i)` reach no
    other listed site's ``logits`` tensor (each is evaluated with the other sites at their
    hard values or at values drawn from their own noise at logits recomputed in that
    evaluation), so that :math:`\partial_{\ell_i} \sum_j [c(z_j) - c(\tilde z_j)] =
    \partial_{\ell_i} [c(z_i) - c(\tilde z_i)]`.

    >>> import torch
    >>> a, b = torch.zeros(2, requires_grad=True), torch.ones(3, requires_grad=True)
    >>> ga, gb = relax_logit_gradients([a, b], [a * 0, b * 0], [a * 0, b * 0],
    ...                                [a.pow(2), b.pow(3)], [a * 0, b * 0])
    >>> gb.tolist()
    [3.0, 3.0, 3.0]
    """
    total = None
    for c_r, c_c in zip(c_relaxed, c_conditional, strict=True):
        for part, sign in ((c_r, 1.0), (c_c, -1.0)):
            if isinstance(part, Tensor) and part.requires_grad:
                term = sign * part.sum()
                total = term if total is None else total + term
    grads: list = [None] * len(logits)
    if total is not None:
        grads = list(
            torch.autograd.grad(
                total,
                list(logits),
                create_graph=create_graph,
                retain_graph=True,
                allow_unused=True,
            )
        )
    out = []
    for i, logit in enumerate(logits):
        pathwise = torch.zeros_like(logit) if grads[i] is None else grads[i]
        coefficient = f_hard[i].detach() - c_conditional[i]
        if not create_graph:
            coefficient = coefficient.detach()
        out.append(coefficient * scores[i].detach() + pathwise)
    return out


def gradient_variance_loss(logit_gradient: Tensor) -> Tensor:
    r"""Single-sample estimate of :math:`\mathbb E[\hat g^2]`, the control variates' objective."""
    return logit_gradient.pow(2).sum()
