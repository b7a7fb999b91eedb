r"""``DiscreteELBO``: one SVI loss for models with discrete latents, estimator by argument.

>>> import torch, pyro, pyro.distributions as dist
>>> from pyro.infer import SVI
>>> from pyro.optim import Adam
>>> from pyro_discrete.infer import DiscreteELBO
>>> def model(x):
...     with pyro.plate("data", len(x)):
...         z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(len(x), 3)).to_event(1))
...         pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=x)
>>> def guide(x):
...     logits = pyro.param("logits", torch.zeros(3))
...     with pyro.plate("data", len(x)):
...         pyro.sample("z", dist.Bernoulli(logits=logits.expand(len(x), 3)).to_event(1))
>>> svi = SVI(model, guide, Adam({"lr": 0.01}), loss=DiscreteELBO(estimator="rebar"))
>>> loss = svi.step(torch.tensor([2.0, 3.0]))
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.subsample_messenger import _Subsample
from pyro.util import check_model_guide_match
from torch import Tensor

from pyro_discrete.distributions import functional as F
from pyro_discrete.estimators import vimco_surrogate
from pyro_discrete.infer.evaluation import (
    GUIDE,
    DiscreteSite,
    Evaluation,
    _GuidePolicy,
    _vectorized_frames,
    cost_terms,
    dependency_map,
    reduce_to_site,
    structure_key,
)
from pyro_discrete.infer.site_estimators import (
    VIMCO,
    SiteEstimator,
    StepTerms,
    make_estimator,
)
from pyro_discrete.infer.sites import SiteError, describe, is_relaxable, site_logits

PARTICLE_PLATE = "num_particles_vectorized"


class DiscreteELBO(ELBO):
    r"""An ELBO for :class:`pyro.infer.SVI` whose gradient estimator for discrete guide
    sites is chosen by one argument.

    Guide sample sites that are not reparameterisable (``Bernoulli``, ``Categorical``,
    ``OneHotCategorical``, also behind ``.expand``, ``.to_event``, ``.mask``, plates and
    subsampling) get the chosen estimator; reparameterised sites keep their pathwise
    gradient and model sites behave as in :class:`pyro.infer.Trace_ELBO`. Each discrete
    site's learning signal holds only the cost terms that depend on it (provenance
    tracking, as Pyro's ``TraceGraph_ELBO``), reduced per element of the plates it shares
    with them.

    :param str estimator: one of ``"reinforce"``, ``"nvil"``, ``"muprop"``, ``"rloo"``,
        ``"vimco"``, ``"arm"``, ``"disarm"``, ``"rebar"``, ``"relax"``, ``"gumbel"``,
        ``"st"``, ``"gumbel_rao"``. A guide site's ``infer={"estimator": name,
        "estimator_options": {...}}`` overrides it for that site.
    :param int num_particles: samples per step; ``"rloo"`` and ``"vimco"`` need at least
        2 and always evaluate them as one vectorised batch.
    :param int max_plate_nesting: as in Pyro; guessed when needed and not given.
    :param bool vectorize_particles: evaluate particles as one batch (as in Pyro).
    :param bool cache_dependencies: find which costs depend on which site once per trace
        structure (site names, shapes, plates) instead of every step. Turn it off only for
        models whose data flow between sites changes with the sampled values while the
        sites stay the same.
    :param estimator_options: options of the chosen estimator (see its class), e.g.
        ``temperature=0.5, learn_control_variates=False`` for ``"rebar"``.
    """

    def __init__(
        self,
        estimator: str = "reinforce",
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = False,
        cache_dependencies: bool = True,
        **estimator_options,
    ):
        self.estimator = make_estimator(estimator, **estimator_options)
        if self.estimator.multi_sample:
            if num_particles < 2:
                raise ValueError(
                    f"estimator '{estimator}' needs num_particles >= 2, got {num_particles}"
                )
            vectorize_particles = True
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
        )
        self.cache_dependencies = cache_dependencies
        self._site_estimators: dict[tuple, SiteEstimator] = {}
        self._dependency_cache: dict[tuple, dict] = {}

    # -- estimator per site -------------------------------------------------------------

    def _estimator_for(self, msg) -> SiteEstimator:
        infer = msg["infer"]
        name = infer.get("estimator")
        options = infer.get("estimator_options", {})
        if name is None and not options:
            return self.estimator
        name = name or self.estimator.name
        key = (name, tuple(sorted((k, id(v)) for k, v in options.items())))
        estimator = self._site_estimators.get(key)
        if estimator is None:
            estimator = make_estimator(name, **options)
            self._site_estimators[key] = estimator
        return estimator

    def _estimators(self):
        yield self.estimator
        yield from self._site_estimators.values()

    # -- the base pass --------------------------------------------------------------------

    def _wrap(self, model, guide, args, kwargs) -> tuple[Callable, Callable]:
        """Model and guide inside the vectorised particle plate, when there is one."""
        if not self.vectorize_particles:
            return model, guide
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        return self._vectorized_num_particles(model), self._vectorized_num_particles(guide)

    def _evaluate(self, model, guide, args, kwargs) -> Evaluation:
        # one ELBO object may serve several models whose sites share names and shapes
        identity = (id(model), id(guide))
        model, guide = self._wrap(model, guide, args, kwargs)
        records: dict[str, DiscreteSite] = {}
        # Relaxed passes re-use the base noise of every site after the relaxed one, so
        # from the first site whose estimator needs noise on, every site draws through it.
        noise_from_here = [False]

        def choose(msg):
            fn = msg["fn"]
            if isinstance(fn, _Subsample) or getattr(fn, "has_rsample", False):
                return None
            name = msg["name"]
            if msg["infer"].get("enumerate"):
                raise SiteError(
                    f"guide site '{name}' is marked infer={{'enumerate': ...}}; DiscreteELBO "
                    "samples discrete sites: remove the flag, or use TraceEnum_ELBO to "
                    "enumerate it"
                )
            estimator = self._estimator_for(msg)
            leaf = describe(fn)
            estimator.check_site(name, leaf.kind, leaf.name)
            estimator.check_baseline_options(name, msg["infer"].get("baseline", {}))
            site = DiscreteSite(name, estimator, leaf.kind, fn, None, -1, ())
            records[name] = site
            if not is_relaxable(leaf.kind):
                site.logits = leaf.logits  # index categoricals: NVIL's baseline input
                return None
            site.logits = site_logits(fn, leaf)
            noise_from_here[0] = noise_from_here[0] or estimator.needs_noise
            if not noise_from_here[0]:
                return None  # Pyro's own sampler: cheaper when no noise is re-used
            site.noise = F.uniform_like(site.logits)
            site.z = site.sample_z(site.logits, site.noise)
            site.hard = site.threshold(site.z).detach()
            return estimator.base_value(site)

        with _GuidePolicy(choose):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        subsamples = {
            name: node["value"]
            for name, node in guide_trace.nodes.items()
            if node["type"] == "sample" and isinstance(node["fn"], _Subsample)
        }
        order = {name: i for i, name in enumerate(guide_trace.nodes)}
        sites = {}
        for name, site in records.items():
            node = guide_trace.nodes[name]
            site.value = node["value"]
            site.order = order[name]
            site.frames = _vectorized_frames(node)
            if site.hard is None:
                site.hard = site.value
            sites[name] = site

        key = (identity, structure_key(model_trace, guide_trace))
        deps = self._dependency_cache.get(key) if self.cache_dependencies else None
        if deps is None:
            deps = dependency_map(model, guide, args, kwargs, guide_trace, frozenset(sites))
            if self.cache_dependencies:
                self._dependency_cache[key] = deps

        particle_frame = None
        if self.vectorize_particles and self.num_particles > 1:
            particle_frame = (PARTICLE_PLATE, -int(self.max_plate_nesting))
        return Evaluation(
            model=model,
            guide=guide,
            args=args,
            kwargs=kwargs,
            model_trace=model_trace,
            guide_trace=guide_trace,
            sites=sites,
            # continuous extensions only where values may be relaxed (Gumbel, ST)
            costs=cost_terms(
                model_trace,
                guide_trace,
                relaxed=any(site.estimator.pathwise for site in sites.values()),
            ),
            deps=deps,
            orders=order,
            particle_frame=particle_frame,
            subsamples=subsamples,
        )

    # -- assembling one step --------------------------------------------------------------

    def _particle_step(self, model, guide, args, kwargs) -> tuple[Tensor, Tensor]:
        """One (possibly vectorised) evaluation: ``(elbo, surrogate loss)``."""
        ev = self._evaluate(model, guide, args, kwargs)
        terms = StepTerms()
        estimators = {type(site.estimator) for site in ev.sites.values()}
        # particle-summed costs are averaged; VIMCO's bound already averages inside the log
        scale = self.num_particles if ev.particle_frame is not None else 1
        if VIMCO in estimators:
            elbo, surrogate = self._vimco(ev)
            scale = 1
        else:
            for site in ev.sites.values():
                if site.estimator.multi_sample and ev.particle_frame is None:
                    raise SiteError(
                        f"site '{site.name}' uses estimator '{site.estimator.name}', which "
                        "needs several particles: set DiscreteELBO(num_particles=K >= 2, "
                        "vectorize_particles=True)"
                    )
            elbo = sum(c.value.sum() for c in ev.costs).detach()
            surrogate = 0.0
            for cost in ev.costs:
                site = ev.sites.get(cost.key[1]) if cost.key[0] == GUIDE else None
                if site is None or site.estimator.pathwise:
                    surrogate = surrogate + cost.value.sum()
            for site in ev.sites.values():
                surrogate = surrogate + site.estimator.surrogate(ev, site, terms)
        loss = -surrogate + terms.fit_loss
        for variance, params in terms.variance:
            grads = torch.autograd.grad(variance, params, retain_graph=True, allow_unused=True)
            for g, p in zip(grads, params, strict=True):
                if g is not None:
                    loss = loss + (g.detach() * p).sum()
        return elbo / scale, loss / scale

    def _vimco(self, ev: Evaluation) -> tuple[Tensor, Tensor]:
        for site in ev.sites.values():
            if not isinstance(site.estimator, VIMCO):
                raise SiteError(
                    "estimator 'vimco' optimises the multi-sample bound of the whole model, "
                    f"so every discrete guide site must use it; site '{site.name}' uses "
                    f"'{site.estimator.name}'"
                )
        common = None
        for cost in ev.costs:
            frames = set(cost.frames)
            common = frames if common is None else common & frames
        common = common or set()
        particle = ev.particle_frame
        if particle not in common:
            common.add(particle)
        # Reduce to the plates every cost shares (per-datum bounds when all latents are
        # local), as a pseudo-site whose batch shape spans the particle dim.
        ndim = -min(d for _, d in common)
        pseudo = DiscreteSite("", None, "", _ShapeOnly(ndim), None, -1, tuple(common))
        log_w = sum(reduce_to_site(c.value, c.frames, pseudo) for c in ev.costs)
        log_q = torch.zeros_like(log_w)
        for site in ev.sites.values():
            log_q = log_q + reduce_to_site(ev.score(site), site.frames, pseudo)
        surrogate, bound = vimco_surrogate(log_w, log_q, particle[1])
        return bound.sum().detach(), surrogate

    def _step(self, model, guide, args, kwargs) -> tuple[Tensor, Tensor]:
        if self.vectorize_particles:
            elbo, loss = self._particle_step(model, guide, args, kwargs)
        else:
            elbo, loss = 0.0, 0.0
            for _ in range(self.num_particles):
                e, l_ = self._particle_step(model, guide, args, kwargs)
                elbo, loss = elbo + e / self.num_particles, loss + l_ / self.num_particles
        for estimator in self._estimators():
            estimator.end_step()
        return elbo, loss

    # -- the ELBO interface -----------------------------------------------------------------

    def _get_trace(self, model, guide, args, kwargs):
        """A guide trace and the model trace replayed against it (the base pass)."""
        ev = self._evaluate(model, guide, args, kwargs)
        return ev.model_trace, ev.guide_trace

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """A loss whose value is minus the ELBO estimate (minus the bound for VIMCO) and
        whose gradient is the chosen estimator's; usable with ``elbo(model, guide)``
        (:class:`pyro.infer.elbo.ELBOModule`) and any torch optimizer."""
        elbo, loss = self._step(model, guide, args, kwargs)
        return -elbo + (loss - loss.detach())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Back-propagate the estimator's gradient; return minus the ELBO estimate."""
        elbo, loss = self._step(model, guide, args, kwargs)
        if loss.requires_grad:
            loss.backward()
        value = -float(elbo)
        _warn_if_nan(value)
        return value

    def loss(self, model, guide, *args, **kwargs) -> float:
        """Minus the ELBO (or, for VIMCO, the K-sample bound) from hard samples, no grads."""
        with torch.no_grad():
            if isinstance(self.estimator, VIMCO):
                elbo, _ = self._particle_step(model, guide, args, kwargs)
                return -float(elbo)
            total = 0.0
            runs = 1 if self.vectorize_particles else self.num_particles
            model, guide = self._wrap(model, guide, args, kwargs)
            for _ in range(runs):
                with poutine.block():
                    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
                    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                        *args, **kwargs
                    )
                costs = cost_terms(model_trace, guide_trace)
                total += float(sum(c.value.sum() for c in costs))
            value = -total / self.num_particles
            _warn_if_nan(value)
            return value


class _ShapeOnly:
    """Stands in for a distribution where only a batch rank is needed."""

    def __init__(self, ndim: int):
        self.batch_shape = torch.Size((1,) * ndim)
        self.event_shape = torch.Size()


def _warn_if_nan(value: float) -> None:
    if value != value:
        warnings.warn(
            "DiscreteELBO: the loss is NaN; check the model's log-densities (a probability "
            "of exactly 0 or 1, or logits that overflow) and the learning rate",
            RuntimeWarning,
            stacklevel=3,
        )
