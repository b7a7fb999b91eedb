r"""REINFORCE (the score-function estimator) and its decaying-average baseline.

For :math:`b \sim q(b \mid \theta)` and a learning signal :math:`f(b)` (for the ELBO, the
cost terms downstream of :math:`b`),

.. math::

    \hat g = (f(b) - c)\, \partial_\theta \log q(b \mid \theta) + \partial_\theta f(b),

unbiased for any baseline :math:`c` that does not depend on :math:`b`. The pathwise term
:math:`\partial_\theta f(b)` is added by the caller.

Reference: R. J. Williams (1992), *Simple statistical gradient-following algorithms for
connectionist reinforcement learning*.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["score_surrogate", "decaying_average", "logit_score"]


def score_surrogate(log_q: Tensor, signal: Tensor, baseline: Tensor | float = 0.0) -> Tensor:
    r"""A surrogate whose gradient is :math:`(f - c)\,\partial_\theta \log q(b)`.

    ``signal`` and ``baseline`` are treated as constants (detached); ``log_q`` is the
    (masked, unscaled) log-probability of the sample, broadcastable with ``signal``.

    >>> import torch
    >>> logits = torch.zeros(3, requires_grad=True)
    >>> b = torch.tensor([1.0, 0.0, 1.0])
    >>> log_q = torch.distributions.Bernoulli(logits=logits).log_prob(b)
    >>> score_surrogate(log_q, torch.tensor(2.0)).backward()
    >>> logits.grad  # 2 * (b - sigmoid(0))
    tensor([ 1., -1.,  1.])
    """
    centred = signal - baseline
    return (centred.detach() * log_q).sum()


def decaying_average(average: Tensor, value: Tensor, beta: float) -> Tensor:
    r"""One step of the exponential moving average :math:`\beta\,a + (1 - \beta)\,v`."""
    return beta * average + (1.0 - beta) * value.detach()


def logit_score(logits: Tensor, value: Tensor, one_hot: bool) -> Tensor:
    r"""The score :math:`\partial_\ell \log q(b \mid \ell)` with respect to the logits.

    Bernoulli: :math:`b - \sigma(\ell)`; one-hot categorical: :math:`b - \mathrm{softmax}(\ell)`.
    Closed forms let estimators that work with logit gradients (ARM, REBAR, RELAX) avoid a
    backward pass through the log-probability.
    """
    if one_hot:
        return value - logits.softmax(-1)
    return value - logits.sigmoid()
