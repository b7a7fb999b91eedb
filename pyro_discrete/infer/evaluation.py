"""The Pyro plumbing shared by every estimator, written once.

One :class:`Evaluation` holds a guide trace and the model trace replayed against it (the
*base pass*, with hard discrete samples), the ELBO's cost terms, which discrete sites each
cost depends on (provenance tracking, cached per trace structure), and the means to run
the guide and model again with some discrete values replaced: kept fixed up to a site,
forced to an antithetic value, relaxed, conditionally relaxed, or set to their means.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyro.poutine as poutine
from pyro.distributions.util import scale_and_mask
from pyro.ops.provenance import extract_provenance, get_provenance, track_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from pyro_discrete.distributions import functional as F
from pyro_discrete.infer.sites import BERNOULLI, ONE_HOT, describe, log_prob, site_logits

MODEL = "model"
GUIDE = "guide"


@dataclass
class DiscreteSite:
    """A non-reparameterised guide sample site and what the base pass drew there."""

    name: str
    estimator: object
    kind: str
    fn: object
    value: Tensor
    order: int
    frames: tuple
    logits: Tensor | None = None
    noise: Tensor | None = None
    z: Tensor | None = None
    hard: Tensor | None = None

    @property
    def batch_ndim(self) -> int:
        return len(self.fn.batch_shape)

    @property
    def event_ndim(self) -> int:
        return len(self.fn.event_shape)

    @property
    def one_hot(self) -> bool:
        return self.kind == ONE_HOT

    def to_event_shape(self, signal: Tensor) -> Tensor:
        """Append singleton dims so a batch-shaped signal broadcasts against the value."""
        return signal.reshape(signal.shape + (1,) * self.event_ndim)

    def threshold(self, z: Tensor) -> Tensor:
        return F.onehot_argmax(z) if self.one_hot else F.heaviside(z)

    def sample_z(self, logits: Tensor, noise: Tensor) -> Tensor:
        return F.gumbel_sample(logits, noise) if self.one_hot else F.logistic_sample(logits, noise)

    def relax(self, z: Tensor, temperature) -> Tensor:
        if self.one_hot:
            return F.relax_categorical(z, temperature)
        return F.relax_bernoulli(z, temperature)

    def conditional_z(self, logits: Tensor, reuse_noise: bool = True) -> Tensor:
        """:math:`\\tilde z \\sim p(z \\mid b)`, re-using the base noise when asked."""
        if self.one_hot:
            recover, sample = F.gumbel_conditional_noise, F.gumbel_conditional_sample
        else:
            recover, sample = F.logistic_conditional_noise, F.logistic_conditional_sample
        noise = recover(self.logits, self.z, self.hard) if reuse_noise else F.uniform_like(logits)
        return sample(logits, self.hard, noise)

    def mean(self, logits: Tensor) -> Tensor:
        return logits.softmax(-1) if self.one_hot else logits.sigmoid()


@dataclass
class Cost:
    """One term of the ELBO: a (scaled, masked) log-density, negated for guide sites."""

    key: tuple[str, str]
    frames: tuple
    value: Tensor


def _vectorized_frames(site) -> tuple:
    return tuple((f.name, f.dim) for f in site["cond_indep_stack"] if f.vectorized)


def _is_subsample(site) -> bool:
    return isinstance(site["fn"], _Subsample)


def cost_terms(model_trace: Trace, guide_trace: Trace, relaxed: bool = False) -> list[Cost]:
    """The ELBO's cost terms; ``relaxed`` scores latent sites with continuous extensions."""
    terms = []
    for role, trace, sign in ((MODEL, model_trace, 1.0), (GUIDE, guide_trace, -1.0)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or _is_subsample(site):
                continue
            lp = log_prob(site["fn"], site["value"], relaxed=relaxed and not site["is_observed"])
            lp = scale_and_mask(lp, site["scale"], site["mask"])
            terms.append(Cost((role, name), _vectorized_frames(site), sign * lp))
    return terms


def reduce_to_site(value: Tensor, frames: tuple, site: DiscreteSite) -> Tensor:
    """Sum a cost over every dim except the vectorised plates it shares with ``site``.

    The result broadcasts against the site's batch shape: a datum's latent sees its own
    datum's costs (Rao-Blackwellisation across plate elements), a global latent sees all.
    """
    shared = {dim for name, dim in frames if (name, dim) in site.frames}
    dims = [d for d in range(-value.dim(), 0) if d not in shared]
    if dims:
        value = value.sum(dims, keepdim=True)
    ndim = site.batch_ndim
    if value.dim() > ndim:
        value = value.reshape(value.shape[value.dim() - ndim :])
    elif value.dim() < ndim:
        value = value.reshape((1,) * (ndim - value.dim()) + value.shape)
    return value


class _GuidePolicy(Messenger):
    """Lets ``choose(msg)`` set the value of guide sample sites (``None``: sample as usual)."""

    def __init__(self, choose: Callable):
        super().__init__()
        self.choose = choose

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None:
            return
        value = self.choose(msg)
        if value is not None:
            msg["value"] = value


class _TrackDiscrete(Messenger):
    """Tags sample values with the discrete sites they descend from.

    A value inherits the provenance of its distribution's parameters (a layer sampled
    given an upstream discrete value depends on it even though sampling is no torch op
    on it), and a discrete site adds its own name.
    """

    def __init__(self, names: frozenset):
        super().__init__()
        self.names = names

    def _pyro_post_sample(self, msg):
        if msg["is_observed"] or isinstance(msg["fn"], _Subsample):
            return
        value, provenance = extract_provenance(msg["value"])
        provenance = provenance | get_provenance(log_prob(msg["fn"], value, relaxed=True))
        if msg["name"] in self.names:
            provenance = provenance | {msg["name"]}
        msg["value"] = track_provenance(value, frozenset(provenance))


def structure_key(model_trace: Trace, guide_trace: Trace) -> tuple:
    """What must not change for a cached dependency map to stay valid."""
    key = []
    for trace in (guide_trace, model_trace):
        for name, site in trace.nodes.items():
            if site["type"] == "sample":
                key.append(
                    (
                        name,
                        site["is_observed"],
                        tuple(site["value"].shape),
                        tuple(f.name for f in site["cond_indep_stack"]),
                    )
                )
        key.append("|")
    return tuple(key)


def dependency_map(
    model, guide, args, kwargs, guide_trace: Trace, names: frozenset
) -> dict[tuple[str, str], frozenset]:
    """For each cost term, the discrete sites whose values it depends on.

    Replays the guide at the base values with the discrete values tagged, then the model,
    and reads the provenance of every log-density (Wingate et al. 2011, as Pyro's
    ``TraceGraph_ELBO`` does).
    """
    with poutine.block(), _TrackDiscrete(names):
        tracked_guide = poutine.trace(poutine.replay(guide, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        tracked_model = poutine.trace(poutine.replay(model, trace=tracked_guide)).get_trace(
            *args, **kwargs
        )
    deps = {}
    for role, trace in ((MODEL, tracked_model), (GUIDE, tracked_guide)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or _is_subsample(site):
                continue
            lp = log_prob(site["fn"], site["value"], relaxed=not site["is_observed"])
            deps[(role, name)] = get_provenance(lp) & names
    return deps


@dataclass
class Evaluation:
    """The base pass of one step and the extra passes estimators ask for."""

    model: Callable
    guide: Callable
    args: tuple
    kwargs: dict
    model_trace: Trace
    guide_trace: Trace
    sites: dict[str, DiscreteSite]
    costs: list[Cost]
    deps: dict[tuple[str, str], frozenset]
    orders: dict[str, int]
    particle_frame: tuple | None = None
    subsamples: dict[str, Tensor] = field(default_factory=dict)
    _mean_field: tuple | None = field(default=None, repr=False)

    # -- learning signals -------------------------------------------------------------

    def signal(self, site: DiscreteSite, costs: list[Cost] | None = None) -> Tensor:
        """The sum of the cost terms that depend on ``site``, reduced to its batch shape."""
        total = None
        for cost in self.costs if costs is None else costs:
            if site.name in self.deps.get(cost.key, ()):
                part = reduce_to_site(cost.value, cost.frames, site)
                total = part if total is None else total + part
        if total is None:
            return site.value.new_zeros((1,) * site.batch_ndim)
        return total

    def score(self, site: DiscreteSite) -> Tensor:
        r""":math:`\log q(b)` of the sampling distribution: unscaled and unmasked."""
        return log_prob(site.fn, site.value, masked=False)

    def particle_dim(self, site: DiscreteSite) -> int:
        if self.particle_frame is None:
            raise ValueError("multi-sample estimators need num_particles >= 2")
        return self.particle_frame[1]

    # -- extra passes -----------------------------------------------------------------

    def run(self, choose: Callable) -> tuple[Trace, Trace]:
        """Run the guide with ``choose`` deciding sample values, then the model against it."""
        with poutine.block(hide_types=["sample"]), _GuidePolicy(choose):
            guide_trace = poutine.trace(self.guide).get_trace(*self.args, **self.kwargs)
        with poutine.block(hide_types=["sample"]):
            model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(
                *self.args, **self.kwargs
            )
        return model_trace, guide_trace

    def _base_value(self, name: str) -> Tensor | None:
        node = self.guide_trace.nodes.get(name)
        return None if node is None else node["value"]

    def prefix_choice(self, site: DiscreteSite, at_site: Callable, after: Callable) -> Callable:
        """A policy: base values before ``site`` (in guide order), ``at_site(msg)`` at it,
        ``after(msg)`` later (``None`` samples afresh). Subsample indices are always kept."""
        order = site.order

        def choose(msg):
            name = msg["name"]
            if isinstance(msg["fn"], _Subsample):
                return self._subsample_value(name)
            if name == site.name:
                return at_site(msg)
            i = self.orders.get(name)
            if i is not None and i < order:
                return self._base_value(name)
            return after(msg)

        return choose

    def _subsample_value(self, name: str) -> Tensor | None:
        return self.subsamples.get(name)

    def relaxed_later(self, temperature_of: Callable) -> Callable:
        """Policy for sites after the relaxed one: relax every Bernoulli / one-hot site
        with its own base-pass noise and the current (relaxed-input) logits."""

        def after(msg):
            later = self.sites.get(msg["name"])
            if later is None or later.noise is None:
                return None
            logits = site_logits(msg["fn"], describe(msg["fn"]))
            return later.relax(later.sample_z(logits, later.noise), temperature_of(later))

        return after

    def mean_field(self) -> tuple[list[Cost], dict[str, Tensor]]:
        """The mean-field pass (every Bernoulli / one-hot value replaced by its mean, layer
        after layer), its relaxed cost terms and the mean values (for their gradients)."""
        if self._mean_field is None:
            means = {}

            def choose(msg):
                if isinstance(msg["fn"], _Subsample):
                    return self._subsample_value(msg["name"])
                site = self.sites.get(msg["name"])
                if site is None or site.kind not in (BERNOULLI, ONE_HOT):
                    # Fresh draws keep the expansion point independent of every b.
                    return None
                logits = site_logits(msg["fn"], describe(msg["fn"]))
                mean = site.mean(logits)
                means[msg["name"]] = mean
                return mean

            model_trace, guide_trace = self.run(choose)
            self._mean_field = (cost_terms(model_trace, guide_trace, relaxed=True), means)
        return self._mean_field
