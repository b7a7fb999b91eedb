"""What a sample site's distribution is, seen through Pyro's wrappers, and the record of a
discrete guide site in one step.

Guides write ``Bernoulli(logits).expand(...).to_event(1).mask(m)``; estimators need the
leaf (Bernoulli, one-hot categorical, ...), its logits at the site's full shape, and a
log-mass that stays differentiable when the value is relaxed into [0, 1]. A
:class:`DiscreteSite` holds the leaf's continuous relaxation from
:mod:`pyro_discrete.distributions` (:class:`~pyro_discrete.distributions.LogisticBernoulli`
or :class:`~pyro_discrete.distributions.GumbelCategorical`) and delegates every relaxed,
conditional, straight-through and mean value to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro.distributions import MaskedDistribution
from pyro.distributions.torch_distribution import ExpandedDistribution
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Independent, OneHotCategorical

from pyro_discrete.distributions import GumbelCategorical, LogisticBernoulli, functional

BERNOULLI = "bernoulli"
ONE_HOT = "one_hot"
CATEGORICAL = "categorical"
OTHER = "other"

#: the continuous variable whose threshold / argmax is each relaxable kind's sample
RELAXATIONS = {BERNOULLI: LogisticBernoulli, ONE_HOT: GumbelCategorical}


class SiteError(ValueError):
    """A model or guide site that an estimator cannot handle; the message says the fix."""


@dataclass(frozen=True)
class Leaf:
    """The innermost distribution of a site: its kind and its logits."""

    kind: str
    logits: Tensor | None
    name: str
    fn: object = None


def describe(fn) -> Leaf:
    """Unwrap ``Independent``, ``Expanded`` and ``Masked`` layers down to the leaf."""
    while isinstance(fn, (Independent, ExpandedDistribution, MaskedDistribution)):
        fn = fn.base_dist
    if isinstance(fn, Bernoulli):
        return Leaf(BERNOULLI, fn.logits, type(fn).__name__, fn)
    if isinstance(fn, OneHotCategorical):
        return Leaf(ONE_HOT, fn.logits, type(fn).__name__, fn)
    if isinstance(fn, Categorical):
        return Leaf(CATEGORICAL, fn.logits, type(fn).__name__, fn)
    return Leaf(OTHER, None, type(fn).__name__, fn)


def is_relaxable(kind: str) -> bool:
    return kind in RELAXATIONS


def site_logits(fn, leaf: Leaf | None = None) -> Tensor:
    """The leaf's logits broadcast to the site's full shape (batch + event)."""
    leaf = describe(fn) if leaf is None else leaf
    return leaf.logits.expand(fn.shape())


def depends_on_parameters(leaf: Leaf) -> bool:
    """Whether any parameter tensor of the leaf distribution carries a gradient."""
    fn = leaf.fn
    for name in getattr(fn, "arg_constraints", {}):
        value = getattr(fn, name, None)
        if torch.is_tensor(value) and value.requires_grad:
            return True
    return False


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
        return functional.bernoulli_log_mass(fn.logits, value)
    if relaxed and isinstance(fn, OneHotCategorical):
        return functional.categorical_log_mass(fn.logits, value)
    return fn.log_prob(value)


@dataclass
class DiscreteSite:
    """A non-reparameterised guide sample site and what the base pass drew there.

    ``noise`` (uniform, the site's full shape) is kept when some estimator evaluates the
    model again at values of this draw; ``z`` is then the relaxation's continuous variable
    and ``hard`` its threshold. ``value`` is what the guide trace recorded (``hard``, or a
    relaxed / straight-through value for pathwise estimators).
    """

    name: str
    estimator: object
    kind: str
    fn: object
    leaf: Leaf
    order: int
    logits: Tensor | None = None
    noise: Tensor | None = None
    z: Tensor | None = None
    hard: Tensor | None = None
    value: Tensor | None = None
    frames: tuple = ()

    @property
    def batch_ndim(self) -> int:
        return len(self.fn.batch_shape)

    @property
    def event_ndim(self) -> int:
        return len(self.fn.event_shape)

    @property
    def one_hot(self) -> bool:
        return self.kind == ONE_HOT

    @property
    def has_parameters(self) -> bool:
        """False for a site whose distribution is a constant: no estimate is needed."""
        return depends_on_parameters(self.leaf)

    def to_event_shape(self, signal: Tensor) -> Tensor:
        """Append singleton dims so a batch-shaped signal broadcasts against the value."""
        return signal.reshape(signal.shape + (1,) * self.event_ndim)

    # -- the continuous relaxation (delegated to pyro_discrete.distributions) ----------

    def relaxation(self, logits: Tensor | None = None):
        """The site's relaxation at ``logits`` (default: the base pass's logits)."""
        logits = self.logits if logits is None else logits
        return RELAXATIONS[self.kind](logits=logits, validate_args=False)

    def draw(self) -> None:
        """Draw the base pass's noise, continuous variable and hard value."""
        self.noise = functional.uniform_like(self.logits)
        self.z = self.relaxation().reparameterize(self.noise)
        self.hard = self.relaxation().threshold(self.z).detach()

    def relaxed(self, temperature, logits: Tensor | None = None) -> Tensor:
        r"""The relaxed value :math:`\sigma_\lambda(z)` of the base noise at ``logits``."""
        relaxation = self.relaxation(logits)
        return relaxation.relax(relaxation.reparameterize(self.noise), temperature)

    def conditional_z(self, reuse_noise: bool = True) -> Tensor:
        r""":math:`\tilde z \sim p(z \mid b)`, coupled to :math:`z` when ``reuse_noise``."""
        conditional = self.relaxation().conditional(self.hard)
        return conditional.coupled_rsample(self.z) if reuse_noise else conditional.rsample()

    def mean(self, logits: Tensor | None = None) -> Tensor:
        """:math:`E[b]`: sigmoid or softmax of the logits."""
        return self.relaxation(logits).probs
