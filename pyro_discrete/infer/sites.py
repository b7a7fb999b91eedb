"""What a sample site's distribution is, seen through Pyro's wrappers, and the record of a
discrete guide site in one step.

Guides write ``Bernoulli(logits).expand(...).to_event(1).mask(m)``; estimators need the
leaf (Bernoulli, one-hot categorical, ...), its logits at the site's full shape, and a
log-mass that stays differentiable when the value is relaxed into [0, 1]. A
:class:`DiscreteSite` holds the leaf's continuous relaxation from
:mod:`pyro_discrete.distributions` (:class:`~pyro_discrete.distributions.LogisticBernoulli`
or :class:`~pyro_discrete.distributions.GumbelCategorical`) and delegates every relaxed,
conditional, straight-through and mean value to it.

Continuous guide sites that are not reparameterised (``has_rsample`` False: Pyro's
``has_rsample_(False)``, ``NonreparameterizedNormal``) are recorded the same way (kind
``"other"``): score-function estimators use their log-density, and LAX draws them through a
rebuilt reparameterisable copy (:func:`reparameterized_draw`).
"""

from __future__ import annotations

import inspect
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


@dataclass
class ReparameterizedDraw:
    r"""A draw :math:`b = T(\theta', \varepsilon)` of a continuous site through a rebuilt copy
    of its distribution, for estimators (LAX) that treat the cost of ``b`` as a black box
    but differentiate a control variate along the reparameterisation.

    ``params`` are detached copies :math:`\theta'` of the leaf distribution's parameters
    (requiring grad where the originals do), ``originals`` the parameters themselves (in the
    caller's graph, for chaining a gradient in :math:`\theta'` back to them), ``fn`` the
    site's distribution (wrappers included) rebuilt on the copies, and ``sample`` the draw,
    differentiable in the copies; the guide trace records ``sample.detach()``.
    """

    params: dict[str, Tensor]
    originals: dict[str, Tensor]
    fn: object
    sample: Tensor

    @property
    def trained(self) -> dict[str, Tensor]:
        """The copies whose originals carry a gradient: the :math:`\theta` of the estimate."""
        return {k: p for k, p in self.params.items() if p.requires_grad}


def _leaf_parameters(leaf) -> dict[str, Tensor]:
    """The leaf's constructor arguments among its ``arg_constraints``: the tensors it was
    built from when it stores them (Normal, Gamma), else all that its constructor takes
    (Beta, LogNormal read them through properties)."""
    accepted = inspect.signature(type(leaf).__init__).parameters
    names = [n for n in getattr(leaf, "arg_constraints", {}) if n in accepted]
    stored = [n for n in names if n in vars(leaf)]
    return {n: getattr(leaf, n) for n in (stored or names)}


def _rewrap(fn, leaf):
    """``fn``'s ``Independent`` / ``Expanded`` / ``Masked`` layers around another leaf."""
    if isinstance(fn, Independent):
        return type(fn)(_rewrap(fn.base_dist, leaf), fn.reinterpreted_batch_ndims)
    if isinstance(fn, MaskedDistribution):
        return MaskedDistribution(_rewrap(fn.base_dist, leaf), fn._mask)
    if isinstance(fn, ExpandedDistribution):
        return ExpandedDistribution(_rewrap(fn.base_dist, leaf), fn.batch_shape)
    return leaf


def reparameterized_draw(fn, site: str, estimator: str) -> ReparameterizedDraw:
    """Draw a continuous site by ``rsample`` of a copy of its distribution, also when the
    site is marked ``has_rsample_(False)`` (Pyro's way of asking for a score-function
    gradient) or is a ``NonreparameterizedNormal``: the copy's gradient is what LAX's
    control variate needs, the site's own value stays detached.

    Raises a :class:`SiteError` naming the site when the distribution cannot be rebuilt
    from its parameters or has no ``rsample`` (Poisson, Binomial, ...).
    """
    leaf = describe(fn).fn
    originals = _leaf_parameters(leaf)
    params = {
        k: v.detach().requires_grad_(v.requires_grad) if torch.is_tensor(v) else v
        for k, v in originals.items()
    }
    dist_name = type(leaf).__name__
    try:
        copy = type(leaf)(**params, validate_args=False)
    except (TypeError, ValueError) as error:
        raise SiteError(
            f"site '{site}' has distribution {dist_name}, which estimator '{estimator}' cannot "
            f"rebuild from its parameters {sorted(params)} ({error}): give this site a "
            "score-function estimator with infer={'estimator': 'reinforce'} (or 'nvil', 'rloo')"
        ) from error
    copy = _rewrap(fn, copy)
    try:
        sample = copy.rsample()
    except NotImplementedError as error:
        raise SiteError(
            f"site '{site}' has distribution {dist_name}, which has no reparameterised "
            f"sampler (rsample) that estimator '{estimator}' needs: give this site a "
            "score-function estimator with infer={'estimator': 'reinforce'} (or 'nvil', 'rloo')"
        ) from error
    if sample.shape != fn.shape():
        raise SiteError(
            f"site '{site}': the rebuilt {dist_name} draws shape {tuple(sample.shape)}, not "
            f"the site's {tuple(fn.shape())}; estimator '{estimator}' cannot handle it: use "
            "infer={'estimator': 'reinforce'} (or 'nvil', 'rloo') for this site"
        )
    return ReparameterizedDraw(params, originals, copy, sample)


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
    #: continuous sites drawn through ``rsample`` of a copy (LAX), see :class:`ReparameterizedDraw`
    reparameterized: ReparameterizedDraw | None = None

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

    @property
    def plate_shape(self) -> tuple[int, ...]:
        """The batch shape with every dim that is not a vectorised plate of the site set to
        1: the shape of one control-variate value per plate element."""
        dims = {d for _, d in self.frames}
        shape = self.fn.batch_shape
        return tuple(shape[d] if d in dims else 1 for d in range(-self.batch_ndim, 0))

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
