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

__all__ = ["relax_logit_gradient", "gradient_variance_loss"]


def _grad_or_zero(output: Tensor, logits: Tensor, create_graph: bool) -> Tensor:
    if not output.requires_grad:  # the surrogate does not depend on the relaxed value
        return torch.zeros_like(logits)
    (grad,) = torch.autograd.grad(
        output, logits, create_graph=create_graph, retain_graph=True, allow_unused=True
    )
    return torch.zeros_like(logits) if grad is None else grad


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
    # one backward pass for both reparameterised terms
    pathwise = _grad_or_zero(c_relaxed.sum() - c_conditional.sum(), logits, create_graph)
    coefficient = f_hard.detach() - c_conditional
    if not create_graph:
        coefficient = coefficient.detach()
    return coefficient * score.detach() + pathwise


def gradient_variance_loss(logit_gradient: Tensor) -> Tensor:
    r"""Single-sample estimate of :math:`\mathbb E[\hat g^2]`, the control variates' objective."""
    return logit_gradient.pow(2).sum()
