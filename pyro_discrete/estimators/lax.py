r"""LAX: a learned control variate for a black-box cost of a continuous sample
(Grathwohl et al., 2018).

With :math:`b = T(\theta, \varepsilon)` a reparameterised draw of :math:`q(b \mid \theta)`
and :math:`f` a cost that is never differentiated (a simulator, numpy code, a cost Pyro was
told not to reparameterise through),

.. math::

    \hat g = \big[f(b) - c_\phi(b)\big]\, \partial_\theta \log q(b \mid \theta)
             + \partial_\theta c_\phi\big(T(\theta, \varepsilon)\big),

unbiased for every differentiable :math:`c_\phi`: both
:math:`E[c_\phi(b)\,\partial_\theta \log q(b)]` and :math:`E[\partial_\theta c_\phi(T(\theta,
\varepsilon))]` equal :math:`\partial_\theta E[c_\phi(b)]`. :math:`\phi` is fitted by
minimising the single-sample :math:`\hat g^2` (the gradient of the variance, since
:math:`\hat g` is unbiased), which needs :math:`\hat g` with its graph in :math:`\phi`.
The coefficient :math:`f(b) - c_\phi(b)` is a constant in :math:`\theta`: it is evaluated
at the detached sample.

Here :math:`\theta` are the parameter tensors of one site's distribution; the caller chains
:math:`\hat g` into the parameters they were computed from.

Reference: W. Grathwohl, D. Choi, Y. Wu, G. Roeder, D. Duvenaud (2018),
*Backpropagation through the Void: Optimizing control variates for black-box gradient
estimation*, ICLR (arXiv 1711.00123), section 3.1 and Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["lax_parameter_gradients"]


def lax_parameter_gradients(
    params: Sequence[Tensor],
    log_q: Tensor,
    f_value: Tensor,
    c_detached: Tensor,
    c_pathwise: Tensor,
    create_graph: bool = False,
) -> list[Tensor]:
    r"""LAX's estimate of :math:`\partial_\theta E[f(b)]` for each tensor of ``params``.

    :param params: the distribution's parameter tensors :math:`\theta` (requiring grad).
    :param log_q: :math:`\log q(b \mid \theta)` at the *detached* sample, per element.
    :param f_value: :math:`f(b)`, broadcastable against ``log_q``; never differentiated.
    :param c_detached: :math:`c_\phi(b)` at the detached sample (a function of :math:`\phi`
        only), broadcastable against ``log_q``.
    :param c_pathwise: :math:`c_\phi(T(\theta, \varepsilon))`, the same values computed
        from the reparameterised sample (differentiable in ``params``).
    :param create_graph: keep the graph so that the result can be differentiated with
        respect to :math:`\phi` (the variance objective).
    :returns: one tensor per parameter, shaped like it.

    >>> import torch
    >>> loc, scale = torch.tensor([0.5], requires_grad=True), torch.tensor([2.0])
    >>> eps = torch.tensor([0.3]); b = loc + scale * eps
    >>> log_q = torch.distributions.Normal(loc, scale).log_prob(b.detach())
    >>> f = (b.detach() - 1.3) ** 2            # a black box: only its value is used
    >>> c = lambda v: 0.5 * v**2               # any differentiable control variate
    >>> (g,) = lax_parameter_gradients([loc], log_q, f, c(b.detach()), c(b))
    >>> torch.allclose(g, (f - c(b.detach())) * eps / scale + b.detach())
    True
    """
    coefficient = f_value.detach() - c_detached
    if not create_graph:
        coefficient = coefficient.detach()
    objective = (coefficient * log_q).sum() + c_pathwise.sum()
    grads = torch.autograd.grad(
        objective, list(params), create_graph=create_graph, retain_graph=True, allow_unused=True
    )
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
