r"""REBAR: the relaxed model as a control variate (Tucker et al., 2017).

REBAR is RELAX with the fixed-form surrogate :math:`c(z) = \eta\, f(\sigma_\lambda(z))`:

.. math::

    \hat g = \big[f(b) - \eta f(\sigma_\lambda(\tilde z))\big]\, \partial_\theta \log q(b)
             + \eta\, \partial_\theta f(\sigma_\lambda(z))
             - \eta\, \partial_\theta f(\sigma_\lambda(\tilde z)),

with :math:`b = H(z)`, :math:`\tilde z \sim p(z \mid b)` and
:math:`\sigma_\lambda(z) = \sigma(z/\lambda)` (softmax for categoricals).
The scale :math:`\eta` and the temperature :math:`\lambda`
are tuned online by minimising :math:`\mathbb E[\hat g^2]`
(:func:`~pyro_discrete.estimators.relax.gradient_variance_loss`). Three evaluations of
:math:`f`: hard, relaxed and conditionally relaxed.

Reference: G. Tucker, A. Mnih, C. J. Maddison, D. Lawson, J. Sohl-Dickstein (2017),
*REBAR: Low-variance, unbiased gradient estimates for discrete latent variable models*.
"""

from __future__ import annotations

from torch import Tensor

from pyro_discrete.estimators.relax import relax_logit_gradient

__all__ = ["rebar_logit_gradient"]


def rebar_logit_gradient(
    logits: Tensor,
    score: Tensor,
    f_hard: Tensor,
    f_relaxed: Tensor,
    f_conditional: Tensor,
    eta: Tensor | float,
    create_graph: bool = False,
) -> Tensor:
    r"""REBAR's estimate of :math:`\partial_\ell \mathbb E[f(b)]`.

    ``f_relaxed`` and ``f_conditional`` are :math:`f(\sigma_\lambda(z))` and
    :math:`f(\sigma_\lambda(\tilde z))`, built from ``logits``; see
    :func:`~pyro_discrete.estimators.relax.relax_logit_gradient` for the other arguments.
    """
    return relax_logit_gradient(
        logits, score, f_hard, eta * f_relaxed, eta * f_conditional, create_graph
    )
