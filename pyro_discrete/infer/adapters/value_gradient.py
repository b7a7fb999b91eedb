r"""Shared plumbing of the estimators that read :math:`\nabla_x f` at the sampled values.

Double control variates and RODEO use the gradient of the learning signal with respect to
a Bernoulli site's value, :math:`g = \nabla_x f(x)`, with :math:`f` extended to real
:math:`x` through the model's own arithmetic. The base pass gives the site its hard sample
as a leaf tensor that requires a gradient, so :math:`g` comes from one backward pass
through the costs already computed: no extra evaluation of the model or guide. Later guide
sites keep their sampled values (a sample carries no gradient), as in the papers'
multi-layer code.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_discrete import estimators as E
from pyro_discrete.infer.adapters.base import SiteEstimator, Terms, variance_gradient_loss
from pyro_discrete.infer.evaluation import DiscreteSite, Evaluation
from pyro_discrete.infer.sites import BERNOULLI, SiteError


def signal_and_value_gradient(ev: Evaluation, site: DiscreteSite) -> tuple[Tensor, Tensor]:
    r"""The site's learning signal (batch shape, with singleton event dims) and
    :math:`g = \partial F / \partial x` (value shape), :math:`F` the sum of the costs that
    depend on the site. Costs that read the value without a gradient path (as an index,
    say) contribute nothing; the site's own :math:`-\log q(x)` always contributes
    :math:`-\eta`. Any :math:`g` keeps the estimators unbiased: it only sets how well the
    control variates track :math:`f`."""
    signal = site.to_event_shape(ev.signal(site).detach())
    total = sum(c.value.sum() for c in ev.costs if site.name in ev.deps.get(c.key, ()))
    grad = None
    if site.value.requires_grad and torch.is_tensor(total) and total.requires_grad:
        (grad,) = torch.autograd.grad(total, site.value, retain_graph=True, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(site.hard)
    return signal, grad.detach()


def sample_dim(ev: Evaluation, site: DiscreteSite) -> int:
    """The particle dim as a (negative) index into the site's value (batch + event)."""
    return ev.particle_dim(site) - site.event_ndim


class ValueGradientEstimator(SiteEstimator):
    """Base of ``double_cv`` and ``rodeo``: K >= 2 vectorised Bernoulli samples whose
    values carry a gradient in the base pass."""

    requires = "bernoulli"
    multi_sample = True
    # the hook that lets the base pass give the site a value that requires a gradient
    needs_noise = True

    def check_site(self, name: str, kind: str, dist_name: str) -> None:
        if kind != BERNOULLI:
            raise SiteError(
                f"site '{name}' has distribution {dist_name}; estimator '{self.name}' "
                "handles Bernoulli sites only (its paper and official code define it for "
                "binary latents): give this site infer={'estimator': 'rloo'}, which uses "
                "the same K samples without the extra control variates"
            )

    def base_value(self, site: DiscreteSite) -> Tensor:
        return site.hard.detach().clone().requires_grad_(True)

    def variance_loss(self, grad: Tensor, dim: int) -> Tensor:
        """Single-sample :math:`\\mathbb E[\\hat g^2]` of the K-sample mean (the papers'
        objective: the squared estimate of the logit gradient)."""
        return E.gradient_variance_loss(grad.mean(dim))

    def logit_terms(self, site, grad: Tensor, dim: int, params: list[Tensor]) -> Terms:
        """The surrogate of a logit-gradient estimate and, when ``params`` are trained,
        their variance objective."""
        terms = Terms(surrogate=(grad.detach() * site.logits).sum())
        if params:
            objective = self.variance_loss(grad, dim)
            terms.control_variate_loss = variance_gradient_loss(objective, params)
        return terms
