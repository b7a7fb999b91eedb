"""What a sample site's distribution is, seen through Pyro's wrappers.

Guides write ``Bernoulli(logits).expand(...).to_event(1).mask(m)``; estimators need the
leaf (Bernoulli, one-hot categorical, ...), its logits at the site's full shape, and a
log-mass that stays differentiable when the value is relaxed into [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro.distributions import MaskedDistribution
from pyro.distributions.torch_distribution import ExpandedDistribution
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Independent, OneHotCategorical

from pyro_discrete.distributions import functional as F

BERNOULLI = "bernoulli"
ONE_HOT = "one_hot"
CATEGORICAL = "categorical"
OTHER = "other"


class SiteError(ValueError):
    """A model or guide site that an estimator cannot handle; the message says the fix."""


@dataclass(frozen=True)
class Leaf:
    """The innermost distribution of a site: its kind and its logits."""

    kind: str
    logits: Tensor | None
    name: str


def describe(fn) -> Leaf:
    """Unwrap ``Independent``, ``Expanded`` and ``Masked`` layers down to the leaf."""
    while isinstance(fn, (Independent, ExpandedDistribution, MaskedDistribution)):
        fn = fn.base_dist
    if isinstance(fn, Bernoulli):
        return Leaf(BERNOULLI, fn.logits, type(fn).__name__)
    if isinstance(fn, OneHotCategorical):
        return Leaf(ONE_HOT, fn.logits, type(fn).__name__)
    if isinstance(fn, Categorical):
        return Leaf(CATEGORICAL, fn.logits, type(fn).__name__)
    return Leaf(OTHER, None, type(fn).__name__)


def is_relaxable(kind: str) -> bool:
    return kind in (BERNOULLI, ONE_HOT)


def site_logits(fn, leaf: Leaf) -> Tensor:
    """The leaf's logits broadcast to the site's full shape (batch + event)."""
    return leaf.logits.expand(fn.shape())


def log_prob(fn, value: Tensor, relaxed: bool = False, masked: bool = True) -> Tensor:
    r"""``fn.log_prob(value)`` through Pyro's wrappers, with two switches.

    ``relaxed``: extend the Bernoulli and one-hot categorical masses continuously (equal at
    discrete values, differentiable in ``value``; torch's ``OneHotCategorical.log_prob``
    takes an argmax and is not), so that models and guides can be scored at relaxed values.
    ``masked=False``: ignore ``MaskedDistribution`` masks, for the score
    :math:`\partial_\theta \log q(b)` of the sampling distribution, which a mask on the
    objective does not change.
    """
    if isinstance(fn, Independent):
        lp = log_prob(fn.base_dist, value, relaxed, masked)
        n = fn.reinterpreted_batch_ndims
        return lp.sum(tuple(range(-n, 0))) if n else lp
    if isinstance(fn, MaskedDistribution):
        lp = log_prob(fn.base_dist, value, relaxed, masked)
        mask = fn._mask
        if not masked or mask is True:
            return lp
        if mask is False:
            return torch.zeros_like(lp)
        return torch.where(mask, lp, torch.zeros_like(lp))
    if isinstance(fn, ExpandedDistribution):
        return log_prob(fn.base_dist, value, relaxed, masked)
    if relaxed and isinstance(fn, Bernoulli):
        return F.bernoulli_log_mass(fn.logits, value)
    if relaxed and isinstance(fn, OneHotCategorical):
        return F.categorical_log_mass(fn.logits, value)
    return fn.log_prob(value)
