r"""The expectation model: a network regressed on unbiased single-sample gradients, whose
prediction is used as the gradient ("synthetic gradients for expectation modelling").

For a discrete site with logits :math:`\ell = \ell_\theta(x)` and an unbiased
single-sample estimate of :math:`\partial_\ell \mathbb E_{q(b \mid \ell)}[f(b)]`,

.. math:: \hat g = \big(f(b) - c\big)\, \partial_\ell \log q(b \mid \ell)

(REINFORCE with a baseline :math:`c` independent of :math:`b`, or RLOO's leave-one-out
baseline over :math:`K` samples), a network :math:`g_\psi` of the site's inputs is fitted by
mean-squared error

.. math:: L(\psi) = \big\| g_\psi(x) - \hat g \big\|^2,

whose minimiser over functions of :math:`x` is :math:`\mathbb E[\hat g \mid x] =
\partial_\ell \mathbb E[f(b)]`: the network averages the noise away and models the
gradient's expectation. Its detached output is then used as the gradient of the logits,
chained into :math:`\theta` by the surrogate :math:`g_\psi(x)^\top \ell_\theta(x)`.

**Biased**: the estimate is only as good as the regression (and lags behind the parameters
while they move); its variance is that of the network's prediction, not of :math:`\hat g`.

References: A. Sharma, D. Arpit, S. Ozair, Y. Bengio, *Gradients for discrete latent
variables* (MILA slides, "synthetic gradients for expectation modelling"); M. Jaderberg et
al. (2017), *Decoupled Neural Interfaces using Synthetic Gradients*, ICML.
"""

from __future__ import annotations

from torch import Tensor

__all__ = [
    "expectation_model_loss",
    "expectation_model_surrogate",
    "score_function_logit_gradient",
]


def score_function_logit_gradient(score: Tensor, centred_signal: Tensor) -> Tensor:
    r"""The single-sample regression target :math:`\hat g = (f(b) - c)\,\partial_\ell \log
    q(b)`, detached.

    :param score: :math:`\partial_\ell \log q(b)` (see
        :func:`~pyro_discrete.estimators.reinforce.logit_score`), shaped like the logits.
    :param centred_signal: :math:`f(b) - c`, broadcastable to ``score``.

    >>> import torch
    >>> score_function_logit_gradient(torch.tensor([0.5, -0.5]), torch.tensor(2.0))
    tensor([ 1., -1.])
    """
    return (centred_signal * score).detach()


def expectation_model_loss(prediction: Tensor, target: Tensor) -> Tensor:
    r"""The regression objective :math:`\|g_\psi - \hat g\|^2` (summed), whose gradient
    reaches only the network through ``prediction``."""
    return (prediction - target.detach()).pow(2).sum()


def expectation_model_surrogate(logits: Tensor, prediction: Tensor) -> Tensor:
    r"""A surrogate whose gradient in :math:`\theta` is :math:`g_\psi^\top
    \partial_\theta \ell`: the prediction used as the gradient of the logits.

    >>> import torch
    >>> logits = torch.zeros(2, requires_grad=True)
    >>> expectation_model_surrogate(logits, torch.tensor([0.3, -0.1])).backward()
    >>> logits.grad
    tensor([ 0.3000, -0.1000])
    """
    return (prediction.detach() * logits).sum()
