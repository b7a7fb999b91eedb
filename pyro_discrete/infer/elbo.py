r"""``DiscreteELBO``: one SVI loss for models with discrete latents, estimator by argument.

The driver asks :meth:`~pyro_discrete.infer.evaluation.Evaluation.build` once for each
evaluation (the base pass, its cost terms and their dependencies, in one pass down), hands
each discrete guide site to its estimator's adapter (:mod:`pyro_discrete.infer.adapters`)
with it, sums the terms they return, and refuses a step whose loss is not finite before
anything is updated. It knows no estimator by name.

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

import inspect
import itertools
import numbers
import warnings
from collections.abc import Callable, Iterator, Mapping

import pyro
import torch
from pyro.infer import ELBO
from pyro.poutine.subsample_messenger import _Subsample
from torch import Tensor

from pyro_discrete.infer import control_variates as cv
from pyro_discrete.infer.adapters import SiteEstimator, Terms, make_estimator
from pyro_discrete.infer.dependencies import preserved_rng
from pyro_discrete.infer.evaluation import Evaluation, StructureInfo, cost_terms
from pyro_discrete.infer.shared_noise import is_compiling
from pyro_discrete.infer.sites import SiteError, site_logits

PARTICLE_PLATE = "num_particles_vectorized"


class NonFiniteLossError(FloatingPointError, ValueError):
    """A step whose loss or gradient is not finite; nothing was updated."""


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

    A step whose ELBO or loss is not finite raises :class:`NonFiniteLossError` naming the
    cost terms, before any parameter or control-variate state changes.

    :param str estimator: one of :data:`~pyro_discrete.infer.ESTIMATORS` (``"reinforce"``,
        ``"nvil"``, ``"muprop"``, ``"rloo"``, ``"vimco"``, ``"arm"``, ``"disarm"``,
        ``"rebar"``, ``"relax"``, ``"gumbel"``, ``"st"``, ``"gumbel_rao"``, ...). A guide
        site's ``infer={"estimator": name, "estimator_options": {...}}`` overrides it for
        that site.
    :param int num_particles: samples per step; multi-sample estimators (``"rloo"``,
        ``"vimco"``, ``"double_cv"``, ``"rodeo"``, ``"unordered_set"``) need at least 2.
    :param int max_plate_nesting: as in Pyro; guessed when needed and not given (the guess
        draws no random numbers).
    :param bool vectorize_particles: evaluate particles as one batch in a plate at dim
        ``-(max_plate_nesting + 1)`` (as in Pyro), or one after another. Left out: ``True``
        for multi-sample estimators, ``False`` otherwise (Pyro's default). ``"rloo"`` and
        ``"vimco"`` also take ``False``: the particles are then drawn in a loop and the
        estimator is applied across them, so a model may index tables with a sampled value
        (``probs_x[x]``, as in Pyro's HMM example), which a vectorised particle dimension
        breaks unless written ``Vindex(probs_x)[..., x]``.
    :param bool cache_dependencies: find which costs depend on which site once per trace
        structure (site names, shapes, plates) instead of every step. Data flow is read by
        provenance tracking, which sees tensor operations only: a cost computed after a
        sampled value was read outside torch (``.numpy()``, ``.item()``, Python control
        flow such as ``if z.item() == 1``, a simulator) is scored against the sites so read
        by the sequential rule, and warned about once, in one warning naming the cost sites (see
        :mod:`~pyro_discrete.infer.dependencies`); data flow that changes with the sampled
        values needs ``cache_dependencies=False``.
    :param dict estimator_options: options of the chosen estimator (see its class), e.g.
        ``{"temperature": 0.5, "learn_control_variates": False}`` for ``"rebar"``; they may
        also be passed as extra keyword arguments.
    :param bool check_finite: raise on a non-finite loss (a host sync each step).

    The other keyword arguments are Pyro's :class:`~pyro.infer.elbo.ELBO` arguments.
    """

    def __init__(
        self,
        estimator: str = "reinforce",
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        max_iarange_nesting=None,
        vectorize_particles: bool | None = None,
        strict_enumeration_warning: bool = True,
        ignore_jit_warnings: bool = False,
        jit_options=None,
        retain_graph=None,
        tail_adaptive_beta: float = -1.0,
        cache_dependencies: bool = True,
        estimator_options: dict | None = None,
        check_finite: bool = True,
        **options,
    ):
        _check_arguments(
            estimator=estimator,
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            cache_dependencies=cache_dependencies,
            check_finite=check_finite,
            strict_enumeration_warning=strict_enumeration_warning,
            ignore_jit_warnings=ignore_jit_warnings,
            estimator_options=estimator_options,
        )
        self.estimator = make_estimator(estimator, **{**(estimator_options or {}), **options})
        if self.estimator.multi_sample:
            if num_particles < 2:
                raise ValueError(
                    f"DiscreteELBO: estimator '{estimator}' needs num_particles >= 2 (it "
                    f"compares each particle with the others), got {num_particles}"
                )
            if vectorize_particles is None:
                vectorize_particles = True
            elif not vectorize_particles and not self.estimator.loops_particles:
                raise ValueError(
                    f"DiscreteELBO: estimator '{estimator}' evaluates its particles as one "
                    "vectorised batch; vectorize_particles=False is supported by 'rloo' and "
                    "'vimco' only: pass vectorize_particles=True (or leave it out)"
                )
        vectorize_particles = bool(vectorize_particles)
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            max_iarange_nesting=max_iarange_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
            ignore_jit_warnings=ignore_jit_warnings,
            jit_options=jit_options,
            retain_graph=retain_graph,
            tail_adaptive_beta=tail_adaptive_beta,
        )
        self.cache_dependencies = cache_dependencies
        self.check_finite = check_finite
        self._site_estimators: dict[tuple, SiteEstimator] = {}
        #: minus the relaxed objective of the last step, per particle, where an estimator
        #: gave some site a relaxed value (``"gumbel"``); ``None`` otherwise. The reported
        #: loss is always minus the ELBO at hard samples.
        self.last_relaxed_loss: Tensor | None = None
        self._structures: dict[tuple, StructureInfo] = {}
        self._warned_black_box: set = set()  # cost sites already warned about

    # -- estimator per site -------------------------------------------------------------

    def _estimator_for(self, msg) -> SiteEstimator:
        infer = msg["infer"]
        name = infer.get("estimator")
        options = infer.get("estimator_options", {})
        if name is None and not options:
            return self.estimator
        name = name or self.estimator.name
        # keyed by value, so an option rebuilt every step (a fresh float) finds its estimator;
        # sites with the same estimator and options share one (and its grouped state)
        key = (name, tuple(sorted((k, _option_key(v)) for k, v in options.items())))
        estimator = self._site_estimators.get(key)
        if estimator is None:
            estimator = make_estimator(name, site=msg["name"], **options)
            self._site_estimators[key] = estimator
        return estimator

    def _estimators(self):
        yield self.estimator
        yield from self._site_estimators.values()

    # -- the base pass --------------------------------------------------------------------

    def _guess_max_plate_nesting(self, model, guide, args, kwargs):
        # Pyro's guess runs the model and guide: keep it from drawing on the global random
        # stream, so that a run resumed in a fresh process draws what an uninterrupted one does
        with preserved_rng():
            super()._guess_max_plate_nesting(model, guide, args, kwargs)

    def _wrap(self, model, guide, args, kwargs) -> tuple[Callable, Callable]:
        """Model and guide inside the vectorised particle plate, when there is one."""
        if not self.vectorize_particles:
            return model, guide
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        return self._vectorized_num_particles(model), self._vectorized_num_particles(guide)

    def _evaluate(self, model, guide, args, kwargs) -> Evaluation:
        """One evaluation (all the particles when they are vectorised), asked of
        :meth:`Evaluation.build` once."""
        # one ELBO object may serve several models whose sites share names and shapes
        identity = (_identity(model), _identity(guide))
        model, guide = self._wrap(model, guide, args, kwargs)
        particle_frame = None
        if self.vectorize_particles and self.num_particles > 1:
            particle_frame = (PARTICLE_PLATE, -int(self.max_plate_nesting))
        ev = Evaluation.build(
            model,
            guide,
            args,
            kwargs,
            estimator_for=self._estimator_for,
            max_plate_nesting=self.max_plate_nesting,
            particle_frame=particle_frame,
            num_particles=self.num_particles,
            structures=self._structures if self.cache_dependencies else None,
            identity=identity,
            warned=self._warned_black_box,
        )
        looped = not self.vectorize_particles and self.num_particles > 1
        for site in ev.sites.values():
            if site.estimator.multi_sample and particle_frame is None and not looped:
                raise SiteError(
                    f"site '{site.name}' uses estimator '{site.estimator.name}', which "
                    "needs several particles: set DiscreteELBO(num_particles=K >= 2, "
                    "vectorize_particles=True)"
                )
        return ev

    def _get_evaluations(self, model, guide, args, kwargs) -> Iterator[Evaluation]:
        """The step's evaluations, one after another: one in all when the particles are
        vectorised, else one per particle (as Pyro's ``ELBO._get_traces``)."""
        for _ in range(1 if self.vectorize_particles else self.num_particles):
            yield self._evaluate(model, guide, args, kwargs)

    # -- the reported loss ---------------------------------------------------------------

    def _reported_elbo(self, ev: Evaluation) -> Tensor:
        """The ELBO estimate at hard samples (summed over particles), detached.

        Where an estimator gave a site a relaxed value (``"gumbel"``), the base pass's costs
        are the relaxed objective: the model and guide run again, without gradients, with
        every Bernoulli / one-hot site at the threshold of its own noise (at its logits in
        this pass) and every later site that draws without that noise sampled afresh, so
        that the estimate is of the ELBO, as every other estimator reports it. The relaxed
        value is kept in :attr:`last_relaxed_loss`.
        """
        relaxed = [s for s in ev.sites.values() if getattr(s.estimator, "relaxed_forward", False)]
        if not relaxed:
            self.last_relaxed_loss = None
            return ev.elbo()
        self.last_relaxed_loss = -ev.elbo() / ev.num_particles
        first = min(s.order for s in relaxed)

        def choose(msg):
            name = msg["name"]
            if isinstance(msg["fn"], _Subsample):
                return ev.subsamples.get(name)
            site = ev.sites.get(name)
            if site is not None and site.noise is not None:
                relaxation = site.relaxation(site_logits(msg["fn"]))
                return relaxation.threshold(relaxation.reparameterize(site.noise))
            order = ev.orders.get(name)
            if order is not None and order < first:  # upstream of every relaxed value
                return ev.guide_trace.nodes[name]["value"]
            return None

        with torch.no_grad():
            model_trace, guide_trace = ev.run(choose)
            costs = cost_terms(model_trace, guide_trace)
        # kept to name a non-finite term of the hard pass, should the step be refused
        ev.hard_costs = costs
        return sum((c.value.sum() for c in costs), torch.zeros(())).detach()

    # -- assembling one step --------------------------------------------------------------

    def _terms_of(self, ev: Evaluation) -> tuple[Tensor, Tensor, list]:
        model_level = [s.estimator for s in ev.sites.values() if s.estimator.model_level]
        if model_level:
            elbo, terms = model_level[0].model_terms(ev)
            loss = terms.loss()
        else:
            terms = Terms(surrogate=ev.pathwise_surrogate())
            for site in ev.sites.values():
                # nothing to estimate for a constant distribution or an empty batch
                if site.has_parameters and site.value.numel():
                    terms += site.estimator.site_terms(ev, site)
            # particle-summed costs are averaged
            elbo, loss = self._reported_elbo(ev) / ev.num_particles, terms.loss() / ev.num_particles
        return (*self._checked(ev, elbo, loss), terms.updates)

    def _checked(self, ev: Evaluation, elbo: Tensor, loss) -> tuple[Tensor, Tensor]:
        if not torch.is_tensor(loss):
            loss = elbo.new_tensor(float(loss))
        # a host read cannot be traced: CompiledSVI returns the loss for the caller to check
        if self.check_finite and not is_compiling():
            _check_finite(ev, elbo, loss)
        return elbo, loss

    def _looped_terms(self, evs: list[Evaluation]) -> tuple[Tensor, Tensor, list]:
        """``num_particles`` evaluations drawn one after another (``vectorize_particles=False``)
        with a multi-sample estimator applied across them (``"rloo"``, ``"vimco"``)."""
        first = evs[0]
        for i, ev in enumerate(evs[1:], 1):
            if list(ev.sites) != list(first.sites):
                raise SiteError(
                    f"particle {i} drew the discrete guide sites {list(ev.sites)}, particle 0 "
                    f"drew {list(first.sites)}: estimators that compare particles need the same "
                    "sites in each; with vectorize_particles=False the guide must sample the "
                    "same sites every time"
                )
        model_level = [s.estimator for s in first.sites.values() if s.estimator.model_level]
        if model_level:
            elbo, terms = model_level[0].model_particle_terms(evs)
            loss = terms.loss()
        else:
            terms = Terms(surrogate=sum(ev.pathwise_surrogate() for ev in evs))
            for name, site in first.sites.items():
                if not (site.has_parameters and site.value.numel()):
                    continue
                sites = [ev.sites[name] for ev in evs]
                if site.estimator.multi_sample:
                    if not site.estimator.loops_particles:
                        raise SiteError(
                            f"site '{name}' uses estimator '{site.estimator.name}', which "
                            "evaluates its particles as one vectorised batch: set "
                            "DiscreteELBO(vectorize_particles=True), or give the site "
                            "infer={'estimator': 'rloo'}"
                        )
                    terms += site.estimator.particle_terms(evs, sites)
                else:
                    for ev, each in zip(evs, sites, strict=True):
                        terms += site.estimator.site_terms(ev, each)
            elbo = sum(self._reported_elbo(ev) for ev in evs) / len(evs)
            loss = terms.loss() / len(evs)
        culprit = (
            next((ev for ev in evs if ev.non_finite_costs()), first) if self.check_finite else first
        )
        return (*self._checked(culprit, elbo, loss), terms.updates)

    def _step(self, model, guide, args, kwargs) -> tuple[Tensor, Tensor, list]:
        """One step's ``(elbo, loss, running-statistic updates)``, the ELBO and loss checked
        to be finite."""
        evaluations = self._get_evaluations(model, guide, args, kwargs)
        ev = next(evaluations)
        if self.vectorize_particles:
            return self._terms_of(ev)
        if self.num_particles > 1 and any(s.estimator.multi_sample for s in ev.sites.values()):
            return self._looped_terms([ev, *evaluations])
        elbo, loss, updates = 0.0, 0.0, []
        # each particle's terms before the next particle is drawn
        for each in itertools.chain([ev], evaluations):
            e, l_, u = self._terms_of(each)
            elbo, loss = elbo + e / self.num_particles, loss + l_ / self.num_particles
            updates += u
        return elbo, loss, updates

    def _accept(self, updates: list) -> None:
        """Write the step's running statistics and advance the estimators' schedules."""
        for name, value in updates:
            cv.set_running_statistic(name, value)
        for estimator in self._estimators():
            estimator.end_step()

    # -- the ELBO interface -----------------------------------------------------------------

    def _get_trace(self, model, guide, args, kwargs):
        """A guide trace and the model trace replayed against it (the base pass)."""
        ev = self._evaluate(model, guide, args, kwargs)
        return ev.model_trace, ev.guide_trace

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """A loss whose value is minus the ELBO estimate (minus the bound for VIMCO) and
        whose gradient is the chosen estimator's; usable with ``elbo(model, guide)``
        (:class:`pyro.infer.elbo.ELBOModule`) and any torch optimizer."""
        elbo, loss, updates = self._step(model, guide, args, kwargs)
        self._accept(updates)
        return -elbo + (loss - loss.detach())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Back-propagate the estimator's gradient; return minus the ELBO estimate.

        A non-finite gradient raises :class:`NonFiniteLossError` naming the parameters,
        with their gradients cleared, so that :class:`pyro.infer.SVI` updates nothing.
        """
        elbo, loss, updates = self._step(model, guide, args, kwargs)
        if loss.requires_grad:
            loss.backward()
            if self.check_finite:
                _check_finite_grads()
        self._accept(updates)
        return -float(elbo)

    def loss(self, model, guide, *args, **kwargs) -> float:
        """Minus the ELBO estimate at the step's hard samples (for VIMCO, the K-sample
        bound), without gradients: the value :meth:`loss_and_grads` returns, from the same
        draws at the same seed."""
        with torch.no_grad():
            if self.estimator.model_level:
                elbo, _, _ = self._step(model, guide, args, kwargs)
                return -float(elbo)
            total = sum(
                float(self._reported_elbo(ev))
                for ev in self._get_evaluations(model, guide, args, kwargs)
            )
            value = -total / self.num_particles
            if self.check_finite and not _finite(value):
                warnings.warn(
                    f"DiscreteELBO: the loss is {value}; check the model's log-densities "
                    "(a probability of exactly 0 or 1, or logits that overflow)",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return value


def _identity(fn) -> tuple:
    """What names a model or guide across calls: a bound method is re-made at each
    ``net.guide`` read, so it is named by its function and its object, which live on."""
    if inspect.ismethod(fn):
        return (id(fn.__func__), id(fn.__self__))
    return (id(fn),)


def _check_arguments(
    *,
    estimator,
    num_particles,
    max_plate_nesting,
    vectorize_particles,
    cache_dependencies,
    check_finite,
    strict_enumeration_warning,
    ignore_jit_warnings,
    estimator_options,
) -> None:
    """Refuse a bad constructor argument now, naming it and the fix, rather than at the
    first step with an error from deep inside."""
    if not isinstance(estimator, str):
        raise TypeError(
            f"DiscreteELBO: estimator must be a name such as 'rloo' (see "
            f"pyro_discrete.infer.ESTIMATORS), got {estimator!r}"
        )
    if isinstance(num_particles, bool) or not isinstance(num_particles, numbers.Integral):
        raise TypeError(
            f"DiscreteELBO: num_particles must be a whole number >= 1, got {num_particles!r}"
        )
    if num_particles < 1:
        raise ValueError(
            f"DiscreteELBO: num_particles must be >= 1 (samples per step), got {num_particles}"
        )
    nesting_ok = max_plate_nesting == float("inf") or (
        isinstance(max_plate_nesting, numbers.Integral)
        and not isinstance(max_plate_nesting, bool)
        and max_plate_nesting >= 0
    )
    if not nesting_ok:
        raise ValueError(
            "DiscreteELBO: max_plate_nesting must be a whole number >= 0 (how many plates "
            "are nested at most) or left out to have it guessed, got "
            f"{max_plate_nesting!r}"
        )
    flags = {
        "cache_dependencies": cache_dependencies,
        "check_finite": check_finite,
        "strict_enumeration_warning": strict_enumeration_warning,
        "ignore_jit_warnings": ignore_jit_warnings,
    }
    if vectorize_particles is not None:
        flags["vectorize_particles"] = vectorize_particles
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"DiscreteELBO: {name} must be True or False, got {value!r}")
    if estimator_options is not None and not isinstance(estimator_options, Mapping):
        raise TypeError(
            "DiscreteELBO: estimator_options must be a dict of option name -> value, e.g. "
            f"{{'temperature': 0.5}}, got {estimator_options!r}"
        )


def _option_key(value):
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return value if not torch.is_tensor(value) else ("id", id(value))


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def _check_finite(ev: Evaluation, elbo: Tensor, loss: Tensor) -> None:
    # one host sync per step on the hot path
    if bool(torch.isfinite(elbo).all() & torch.isfinite(loss.detach()).all()):
        return
    culprits = ev.non_finite_costs() + [
        f"{role} site '{name}' (at the hard sample of a relaxed site)"
        for (role, name), value in ((c.key, c.value) for c in getattr(ev, "hard_costs", ()))
        if not bool(torch.isfinite(value).all())
    ]
    where = (
        "non-finite log-density at " + ", ".join(culprits)
        if culprits
        else "the estimator's loss is not finite although every cost term is (a relaxed or "
        "antithetic evaluation of the model gave a non-finite log-density)"
    )
    raise NonFiniteLossError(
        f"DiscreteELBO: step refused, nothing was updated: {where}. Check the model's "
        "log-densities (a probability of exactly 0 or 1, log(0), logits that overflow) and "
        "the data (NaN or inf in observations)"
    )


def _check_finite_grads() -> None:
    """Refuse non-finite gradients of the param store's tensors, clearing every gradient
    so that the optimizer cannot apply them."""
    store = pyro.get_param_store()
    bad = [
        name
        for name, p in store.named_parameters()
        if p.grad is not None and not bool(torch.isfinite(p.grad).all())
    ]
    if not bad:
        return
    for _, p in store.named_parameters():
        p.grad = None
    raise NonFiniteLossError(
        f"DiscreteELBO: step refused, nothing was updated: the gradient of {', '.join(bad)} "
        "is not finite (a log-density whose derivative overflows, e.g. log of a probability "
        "that reaches 0 or 1; check the model and the learning rate)"
    )
