"""The Pyro plumbing shared by every estimator, written once.

:meth:`Evaluation.build` is the one pass down that a step's driver asks for: it runs the
guide (each discrete site's value chosen by its estimator) and the model replayed against
it (:func:`base_pass`), checks the traces, reads the ELBO's cost terms, and finds which
discrete sites each cost depends on (:mod:`~pyro_discrete.infer.dependencies`, cached per
trace structure). The :class:`Evaluation` it returns holds all that, and the means to run
the guide and model again with some discrete values replaced: kept fixed up to a site,
forced to an antithetic value, relaxed, conditionally relaxed, or set to their means.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace
from pyro.util import check_model_guide_match, check_site_shape
from torch import Tensor

from pyro_discrete.infer.dependencies import (
    GUIDE,
    MODEL,
    CostKey,
    is_subsample,
    structure_key,
    trace_dependencies,
    warn_black_box_costs,
)
from pyro_discrete.infer.sites import (
    DiscreteSite,
    SiteError,
    describe,
    is_relaxable,
    log_prob,
    site_logits,
)

__all__ = [
    "GUIDE",
    "MODEL",
    "Cost",
    "DiscreteSite",
    "Evaluation",
    "StructureInfo",
    "base_pass",
    "check_traces",
    "cost_terms",
    "reduce_to_frames",
    "reduce_to_site",
]


@dataclass
class Cost:
    """One term of the ELBO: a (scaled, masked) log-density, negated for guide sites."""

    key: CostKey
    frames: tuple
    value: Tensor


def vectorized_frames(site) -> tuple:
    return tuple((f.name, f.dim) for f in site["cond_indep_stack"] if f.vectorized)


def cost_terms(model_trace: Trace, guide_trace: Trace, relaxed: bool = False) -> list[Cost]:
    """The ELBO's cost terms; ``relaxed`` scores latent sites with continuous extensions."""
    terms = []
    for role, trace, sign in ((MODEL, model_trace, 1.0), (GUIDE, guide_trace, -1.0)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or is_subsample(site):
                continue
            try:
                lp = log_prob(
                    site["fn"], site["value"], relaxed=relaxed and not site["is_observed"]
                )
            except ValueError as error:  # e.g. a value outside the support: say where
                raise ValueError(f"{role} site '{name}': {error}") from error
            lp = scale_and_mask(lp, site["scale"], site["mask"])
            terms.append(Cost((role, name), vectorized_frames(site), sign * lp))
    return terms


def reduce_to_frames(value: Tensor, frames: tuple, keep: tuple, ndim: int) -> Tensor:
    """Sum a cost over every dim except the vectorised plates in ``keep`` it lies in, and
    shape the result to broadcast against a batch of rank ``ndim``."""
    shared = {dim for name, dim in frames if (name, dim) in keep}
    dims = [d for d in range(-value.dim(), 0) if d not in shared]
    if dims:
        value = value.sum(dims, keepdim=True)
    if value.dim() > ndim:
        value = value.reshape(value.shape[value.dim() - ndim :])
    elif value.dim() < ndim:
        value = value.reshape((1,) * (ndim - value.dim()) + value.shape)
    return value


def reduce_to_site(value: Tensor, frames: tuple, site: DiscreteSite) -> Tensor:
    """A cost reduced to the plates it shares with ``site``, broadcasting against its batch
    shape: a datum's latent sees its own datum's costs (Rao-Blackwellisation across plate
    elements), a global latent sees all."""
    return reduce_to_frames(value, frames, site.frames, site.batch_ndim)


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


class _BasePass(_GuidePolicy):
    """Records every discrete guide site and lets its estimator choose its value.

    Relaxed passes re-use the base noise of every site after the relaxed one, so from the
    first site whose estimator needs noise on, every relaxable site draws through it;
    before that, Pyro's own sampler is cheaper.
    """

    def __init__(self, estimator_for: Callable):
        super().__init__(self._choose)
        self.estimator_for = estimator_for
        self.sites: dict[str, DiscreteSite] = {}
        self.orders: dict[str, int] = {}
        self.subsamples: dict[str, Tensor] = {}
        self.with_noise = False

    def _choose(self, msg):
        fn, name = msg["fn"], msg["name"]
        self.orders[name] = len(self.orders)
        if isinstance(fn, _Subsample) or getattr(fn, "has_rsample", False):
            return None
        if msg["infer"].get("enumerate"):
            # as Pyro's Trace_ELBO and TraceGraph_ELBO: say so, and sample the site
            warnings.warn(
                f"guide site '{name}' is marked infer={{'enumerate': "
                f"{msg['infer']['enumerate']!r}}} (config_enumerate); DiscreteELBO samples "
                "discrete guide sites and ignores the flag: remove it to silence this "
                "warning, or use TraceEnum_ELBO to enumerate the site",
                UserWarning,
                stacklevel=2,
            )
        estimator = self.estimator_for(msg)
        leaf = describe(fn)
        estimator.check_site(name, leaf.kind, leaf.name)
        estimator.check_baseline_options(name, msg["infer"].get("baseline", {}))
        site = DiscreteSite(name, estimator, leaf.kind, fn, leaf, self.orders[name])
        self.sites[name] = site
        if not is_relaxable(leaf.kind):
            site.logits = leaf.logits  # index categoricals: NVIL's baseline input
            return estimator.continuous_value(site)
        site.logits = site_logits(fn, leaf)
        self.with_noise = self.with_noise or estimator.needs_noise
        if not self.with_noise:
            return None
        site.draw()
        return estimator.base_value(site)

    def _pyro_post_sample(self, msg):
        if msg["is_observed"]:
            return
        if isinstance(msg["fn"], _Subsample):
            self.subsamples[msg["name"]] = msg["value"]
            return
        site = self.sites.get(msg["name"])
        if site is not None:
            site.value = msg["value"]
            site.frames = vectorized_frames(msg)
            if site.hard is None:
                site.hard = site.value


def base_pass(
    model, guide, args, kwargs, estimator_for: Callable
) -> tuple[Trace, Trace, _BasePass]:
    """The guide with each discrete site's value chosen by ``estimator_for(msg)``, and the
    model replayed against it."""
    recorder = _BasePass(estimator_for)
    with recorder:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace, recorder


class _LastSample(Messenger):
    """Records the name of the last sample site run, to say where an error arose."""

    def __init__(self):
        super().__init__()
        self.name: str | None = None

    def _pyro_post_sample(self, msg):
        self.name = msg["name"]


#: messages of the errors that indexing with a batched value raises
_INDEX_MESSAGES = (
    "index",  # IndexError: too many indices / out of bounds; TypeError: ... to an index
    "only one element tensors can be converted",  # int(x), float(x)
    "cannot be converted to scalar",  # x.item()
)


def _is_index_error(error: Exception) -> bool:
    if type(error) not in (IndexError, TypeError, ValueError, RuntimeError):
        return False  # a library's own error (SiteError, CompileError) says what is wrong
    text = str(error).lower()
    return isinstance(error, IndexError) or any(m in text for m in _INDEX_MESSAGES)


def _explained_base_pass(
    model, guide, args, kwargs, estimator_for: Callable, particle_frame: tuple | None, size: int
) -> tuple[Trace, Trace, _BasePass]:
    """:func:`base_pass`; with particles vectorised in ``particle_frame``, an indexing error
    of the user's code is explained (the sampled values carry the particle dim)."""
    last = _LastSample()
    try:
        with last:
            return base_pass(model, guide, args, kwargs, estimator_for)
    except (IndexError, TypeError, ValueError, RuntimeError) as error:
        if particle_frame is None or not _is_index_error(error):
            raise
        raise SiteError(
            f"{type(error).__name__}: {error} -- raised by the model or guide after sample "
            f"site '{last.name}', with the particles vectorised: every sampled value has "
            f"an extra batch dim of size num_particles={size} at dim {particle_frame[1]}, "
            "so a value used as an index "
            "(`probs_x[x]` followed by more indexing, a Python list indexed by it, "
            "int(x), x.item()) no longer picks one entry. Write the lookup to broadcast: "
            "`Vindex(probs_x)[..., x, :]` (from pyro.ops.indexing import Vindex) or a "
            "one-hot product `one_hot(x) @ probs_x`, or draw the particles one after "
            "another with DiscreteELBO(..., vectorize_particles=False) (supported by "
            "'rloo', 'vimco' and every single-sample estimator)"
        ) from error


def check_traces(model_trace: Trace, guide_trace: Trace, max_plate_nesting: float) -> None:
    """Pyro's checks of a model and guide trace pair, when validation is enabled: the sites
    match, and each site's log-density shape fits ``max_plate_nesting`` plates."""
    if not is_validation_enabled():
        return
    check_model_guide_match(model_trace, guide_trace, max_plate_nesting)
    for trace in (model_trace, guide_trace):
        for site in poutine.util.prune_subsample_sites(trace).nodes.values():
            if site["type"] == "sample":
                # the log-density's shape, without scoring relaxed values
                fn, value = site["fn"], site["value"]
                batch = value.shape[: value.dim() - len(fn.event_shape)]
                shape = torch.broadcast_shapes(fn.batch_shape, batch)
                check_site_shape(
                    {**site, "log_prob": torch.zeros(()).expand(shape)}, max_plate_nesting
                )


#: the plate that stacks relaxed passes (:meth:`Evaluation.stacked_relaxed_signals`)
RELAXED_PLATE = "relaxed_passes_vectorized"
#: steps with an all-zero relaxed-value gradient before a site is warned about
ZERO_GRADIENT_PATIENCE = 10
#: sums of more terms than this are added in one stacked reduction
_STACKED_SUM = 16


@dataclass
class StructureInfo:
    """What is found once per trace structure and reused by later steps."""

    deps: dict[CostKey, frozenset]
    direct: dict[CostKey, frozenset] | None = None
    #: for each cost, the sites it depends on through a path with no gradient (a black box)
    untraced: dict[CostKey, frozenset] = field(default_factory=dict)
    #: the same among the direct dependencies (what relaxation estimators differentiate)
    direct_untraced: dict[CostKey, frozenset] | None = None
    #: sites whose relaxed value was checked to reach the costs that depend on it
    checked: set[str] = field(default_factory=set)
    #: steps at which a site's dependent model terms had an all-zero gradient
    zero_gradient_steps: dict[str, int] = field(default_factory=dict)
    #: per site, the positions in the base pass's cost list of the terms it is scored against
    signal_costs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: whether relaxed passes may be stacked into one vectorised pass (None: not yet tried;
    #: see :meth:`Evaluation.stacked_relaxed_signals`), and why not when they may not
    relaxed_stacking: bool | None = None
    relaxed_stacking_reason: str = ""


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
    #: set by :meth:`build` before the evaluation is handed out
    structure: StructureInfo | None
    orders: dict[str, int]
    particle_frame: tuple | None = None
    num_particles: int = 1
    subsamples: dict[str, Tensor] = field(default_factory=dict)
    _mean_field: tuple | None = field(default=None, repr=False)
    #: base-pass costs already reduced to a site's plates, by (plates, batch rank)
    _reduced: dict = field(default_factory=dict, repr=False)
    #: results an estimator computes once for all of its sites in this evaluation
    shared_results: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        *,
        estimator_for: Callable,
        max_plate_nesting: float,
        particle_frame: tuple | None = None,
        num_particles: int = 1,
        structures: dict | None = None,
        identity: Hashable = None,
        warned: set | None = None,
    ) -> Evaluation:
        """The evaluation of one step, in one pass down: the base pass, Pyro's checks of
        the traces, the cost terms, then provenance (which costs depend on which sites).

        :param model: the model, wrapped in the particle plate when particles are vectorised.
        :param guide: the guide, wrapped likewise.
        :param estimator_for: ``msg -> SiteEstimator``, the estimator of a discrete guide site.
        :param max_plate_nesting: for Pyro's shape checks.
        :param particle_frame: ``(name, dim)`` of the vectorised particle plate, if any.
        :param num_particles: the size of that plate (1 without one).
        :param structures: what was found per trace structure, filled and reused across
            steps under the key ``(identity, structure_key(...))``; ``None``: find it anew
            (data flow that changes with the sampled values). The traces are checked only
            when a structure is first seen.
        :param identity: the rest of the key (the driver passes the ids of the unwrapped
            model and guide: one ELBO may serve models whose sites share names and shapes).
        :param warned: cost sites already warned about as black boxes (each is named once).
        """
        model_trace, guide_trace, recorded = _explained_base_pass(
            model, guide, args, kwargs, estimator_for, particle_frame, num_particles
        )
        key = (identity, structure_key(model_trace, guide_trace))
        structure = None if structures is None else structures.get(key)
        if structure is None:
            check_traces(model_trace, guide_trace, max_plate_nesting)
        sites = recorded.sites
        ev = cls(
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
            structure=structure,
            orders=recorded.orders,
            particle_frame=particle_frame,
            num_particles=num_particles if particle_frame else 1,
            subsamples=recorded.subsamples,
        )
        if structure is None:
            found = trace_dependencies(model, guide, args, kwargs, guide_trace, frozenset(sites))
            warn_black_box_costs(found, set() if warned is None else warned)
            ev.structure = StructureInfo(found.deps, untraced=found.untraced)
            if structures is not None:
                structures[key] = ev.structure
        return ev

    @property
    def deps(self) -> dict[CostKey, frozenset]:
        return self.structure.deps

    # -- the ELBO and its pathwise part -----------------------------------------------

    def elbo(self) -> Tensor:
        """The ELBO estimate of the base pass (summed over particles), detached."""
        if not self.costs:
            return torch.zeros(())
        return sum(c.value.sum() for c in self.costs).detach()

    def pathwise_surrogate(self) -> Tensor | float:
        """The cost terms differentiated directly: every model term and every guide term
        except those of score-function sites (whose gradient their estimator gives)."""
        total: Tensor | float = 0.0
        for cost in self.costs:
            site = self.sites.get(cost.key[1]) if cost.key[0] == GUIDE else None
            if site is None or site.estimator.pathwise:
                total = total + cost.value.sum()
        return total

    def non_finite_costs(self) -> list[str]:
        """``"model site 'x'"``-style names of the base pass's non-finite cost terms."""
        return [
            f"{role} site '{name}'"
            for (role, name), value in ((c.key, c.value) for c in self.costs)
            if not bool(torch.isfinite(value.detach()).all())
        ]

    # -- learning signals -------------------------------------------------------------

    def signal(self, site: DiscreteSite, costs: list[Cost] | None = None) -> Tensor:
        """The sum of the cost terms that depend on ``site``, reduced to its batch shape."""
        if costs is None:
            return self._base_signal(site)
        total = None
        for cost in costs:
            if site.name in self.deps.get(cost.key, ()):
                part = reduce_to_site(cost.value, cost.frames, site)
                total = part if total is None else total + part
        if total is None:
            return site.value.new_zeros((1,) * site.batch_ndim)
        return total

    def _base_signal(self, site: DiscreteSite) -> Tensor:
        """:meth:`signal` of the base pass's costs. A program with one site and one cost
        per time step (a policy over an episode) has a number of (site, cost) pairs
        quadratic in its length: which costs count for a site is found once per trace
        structure, each cost is reduced once per plate layout, and long sums are added
        in one stacked reduction."""
        index = self.structure.signal_costs.get(site.name)
        if index is None or (index and index[-1] >= len(self.costs)):
            index = tuple(
                i for i, cost in enumerate(self.costs) if site.name in self.deps.get(cost.key, ())
            )
            self.structure.signal_costs[site.name] = index
        if not index:
            return site.value.new_zeros((1,) * site.batch_ndim)
        reduced = self._reduced.setdefault((site.frames, site.batch_ndim), {})
        parts = []
        for i in index:
            part = reduced.get(i)
            if part is None:
                cost = self.costs[i]
                part = reduced[i] = reduce_to_site(cost.value, cost.frames, site)
            parts.append(part)
        if len(parts) > _STACKED_SUM and all(p.shape == parts[0].shape for p in parts):
            return torch.stack(parts).sum(0)
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total

    def score(self, site: DiscreteSite) -> Tensor:
        r""":math:`\log q(b)` of the sampling distribution: unscaled and unmasked."""
        return log_prob(site.fn, site.value, masked=False)

    def particle_dim(self, site: DiscreteSite) -> int:
        if self.particle_frame is None:
            raise SiteError(
                f"site '{site.name}' uses estimator '{site.estimator.name}', which needs "
                "several particles: set DiscreteELBO(num_particles=K >= 2, "
                "vectorize_particles=True)"
            )
        return self.particle_frame[1]

    def scale(self, site: DiscreteSite) -> float | Tensor:
        """The site's ``poutine.scale`` factor (subsampling, annealing)."""
        return self.guide_trace.nodes[site.name]["scale"]

    # -- checks -----------------------------------------------------------------------

    def black_box_costs(self, site: DiscreteSite) -> list[str]:
        """The cost terms of ``site``'s learning signal that depend on its value through a
        path with no gradient (``"model site 'reward'"``-style names, sorted; empty when
        every one is traced through torch).

        Such a cost was computed from the value outside torch (``.numpy()``, ``.tolist()``,
        ``.item()``, Python control flow, a simulator; it is then scored by the sequential
        rule, see :mod:`~pyro_discrete.infer.dependencies`) or through ``torch.no_grad()``
        or ``.detach()``. Score-function estimators need nothing more; estimators that
        differentiate the model through a relaxed value cannot use it
        (:meth:`refuse_black_box_costs`), and those that treat the objective as a black box
        (``relax`` with ``black_box=True``, ``lax``) may ask here to skip that refusal.
        """
        return sorted(
            f"{role} site '{name}'"
            for (role, name), sites in self.structure.untraced.items()
            if site.name in sites
        )

    def refuse_black_box_costs(self, site: DiscreteSite) -> None:
        """Refuse, naming the cost site, the guide site and the alternatives, a cost into
        which ``site``'s value enters with no gradient path (outside torch, under
        ``torch.no_grad()``, through ``.detach()``): an estimator that differentiates the
        model through a relaxed value would ignore that part of it, silently biased.
        Called before the estimator computes or registers anything, so a refused step
        updates nothing."""
        self.direct_deps()
        for (role, name), sites in sorted(self.structure.direct_untraced.items()):
            if name == site.name or site.name not in sites:
                continue
            raise SiteError(
                f"{role} site '{name}' is a black-box cost of guide site '{site.name}' "
                f"({type(site.fn).__name__}): it is computed from the value outside torch's "
                "autograd (.numpy(), .tolist(), .item(), Python control flow, a simulator, "
                "torch.no_grad() or .detach()), so it has no gradient path to the relaxed "
                f"value that estimator '{site.estimator.name}' differentiates, which would "
                "silently ignore it. Use an estimator that treats the cost as a black box: "
                f"infer={{'estimator': 'rloo'}} for '{site.name}' (or 'reinforce', 'nvil'), "
                "'relax' with black_box=True (a learned surrogate), or 'lax' for a "
                "continuous site; or write the cost with torch operations on the value"
            )

    def check_relaxed_value_reaches_costs(
        self, site: DiscreteSite, value: Tensor, costs: list[Cost]
    ) -> None:
        """Refuse a model that uses a relaxed site's value without a gradient path.

        ``costs`` were computed with ``value`` at the site. Every model term (and every
        other latent's term) into which the site's value enters directly must be
        differentiable in it: a black-box cost (see :meth:`refuse_black_box_costs`),
        indexing with the sample (``table[z.argmax(-1)]``, ``e[z.long()]``) or
        thresholding it (``(z > 0.5).float()``) passes the value along with no gradient,
        and a relaxation estimator would then be silently biased. Checked once per trace
        structure and site (the black-box refusal every time: it is a look-up).
        """
        self.refuse_black_box_costs(site)
        if site.name in self.structure.checked or not value.requires_grad:
            return
        direct = self.direct_deps()
        all_zero = False
        for cost in costs:
            if cost.key[1] == site.name or site.name not in direct.get(cost.key, ()):
                continue
            grad = None
            if cost.value.requires_grad:
                (grad,) = torch.autograd.grad(
                    cost.value.sum(), value, retain_graph=True, allow_unused=True
                )
            role, name = cost.key
            if grad is None:
                raise SiteError(
                    f"{role} site '{name}' depends on the value of guide site '{site.name}' "
                    f"({type(site.fn).__name__}) without a gradient path to it (indexing with "
                    "the sample, .long(), argmax or a comparison), so estimator "
                    f"'{site.estimator.name}', which differentiates the model through a "
                    "relaxed value, would be biased: write the dependence as arithmetic on "
                    "the value (one-hot `z @ table`, `2 * z - 1`, `torch.where`), or give "
                    f"'{site.name}' a score-function estimator with "
                    "infer={'estimator': 'rloo'} (or 'reinforce', 'nvil')"
                )
            # A guide term of a reparameterised site can legitimately have zero gradient
            # (its value moves with its location), and so can a model at its start (weights
            # initialised at 0); a model that rounds the value stays at zero. Look again at
            # later steps and warn only when it persists.
            all_zero = all_zero or (role == MODEL and not bool(grad.ne(0).any()))
        # marked only once passed: a refused step is refused again when retried
        self.structure.checked.add(site.name)
        if all_zero:
            steps = self.structure.zero_gradient_steps.get(site.name, 0) + 1
            self.structure.zero_gradient_steps[site.name] = steps
            if steps < ZERO_GRADIENT_PATIENCE:
                self.structure.checked.discard(site.name)
                return
            warnings.warn(
                f"the model's terms that depend on guide site '{site.name}' have had an "
                f"exactly zero gradient in its relaxed value for {steps} steps (e.g. "
                f"torch.round of the value): estimator '{site.estimator.name}' gives "
                f"'{site.name}' no learning signal from them",
                RuntimeWarning,
                stacklevel=2,
            )

    def direct_deps(self) -> dict[CostKey, frozenset]:
        if self.structure.direct is None:
            found = trace_dependencies(
                self.model,
                self.guide,
                self.args,
                self.kwargs,
                self.guide_trace,
                frozenset(self.sites),
                inherit=False,
            )
            self.structure.direct = found.deps
            self.structure.direct_untraced = found.untraced
        return self.structure.direct

    # -- extra passes -----------------------------------------------------------------

    def run(self, choose: Callable, wrap: Callable | None = None) -> tuple[Trace, Trace]:
        """Run the guide with ``choose`` deciding sample values, then the model against it;
        ``wrap``, if given, wraps each of them first (e.g. in a plate)."""
        guide, model = self.guide, self.model
        if wrap is not None:
            guide, model = wrap(guide), wrap(model)
        with poutine.block(hide_types=["sample"]), _GuidePolicy(choose):
            guide_trace = poutine.trace(guide).get_trace(*self.args, **self.kwargs)
        with poutine.block(hide_types=["sample"]):
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
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
                return self.subsamples.get(name)
            if name == site.name:
                return at_site(msg)
            i = self.orders.get(name)
            if i is not None and i < order:
                return self._base_value(name)
            return after(msg)

        return choose

    def relaxed_later(self, temperature: Tensor | float) -> Callable:
        """Policy for sites after a relaxed one: each Bernoulli / one-hot site is relaxed
        with its own base-pass noise at its current (relaxed-input) logits and the
        temperature its estimator relaxes it at (``temperature`` if it has none)."""

        def after(msg):
            later = self.sites.get(msg["name"])
            if later is None or later.noise is None:
                return None
            own = later.estimator.relaxation_temperature(later)
            return later.relaxed(temperature if own is None else own, site_logits(msg["fn"]))

        return after

    def stacking_obstacle(self, first_order: int) -> str:
        """Why relaxed passes that start at guide position ``first_order`` cannot be stacked
        into one vectorised pass ('' when they can): a guide site after it that would be
        drawn afresh in each pass (a continuous site, a discrete site without base noise),
        or a model latent that the guide does not sample. Stacked, those draws would be
        independent per pass instead of shared between a site's two passes."""
        for name, node in self.guide_trace.nodes.items():
            if node["type"] != "sample" or is_subsample(node) or node["is_observed"]:
                continue
            order = self.orders.get(name, -1)
            site = self.sites.get(name)
            if order >= first_order and (site is None or site.noise is None):
                return f"guide site '{name}' is drawn afresh in each relaxed pass"
        for name, node in self.model_trace.nodes.items():
            if node["type"] != "sample" or is_subsample(node) or node["is_observed"]:
                continue
            if name not in self.guide_trace.nodes:
                return f"model site '{name}' is a latent the guide does not sample"
        return ""

    def stacked_relaxed_signals(
        self, requests: list[tuple[DiscreteSite, Tensor, Tensor | float]]
    ) -> list[Tensor]:
        """The learning signals of several relaxed passes from one vectorised evaluation.

        Each request ``(site, value, temperature)`` stands for the pass
        ``run(prefix_choice(site, at_site=value, after=relaxed_later(temperature)))`` whose
        relaxed costs give ``signal(site, costs)``. The passes are stacked along a new
        leftmost batch dim (a plate of size ``len(requests)`` left of every dim the base
        pass used, as ``vectorize_particles`` stacks particles): each guide site gets, per
        pass, its base value, the requested value, or its base noise relaxed at its logits
        in that pass, so the guide and the model run once. The caller checks
        :meth:`stacking_obstacle` first and that the model broadcasts over the new dim
        (a model that reads shapes or reduces over every dim does not).
        """
        n = len(requests)
        rank = 1
        for trace in (self.model_trace, self.guide_trace):
            for node in trace.nodes.values():
                if node["type"] != "sample" or is_subsample(node):
                    continue
                rank = max(rank, len(node["fn"].batch_shape) + 1)
                for frame in node["cond_indep_stack"]:
                    if frame.vectorized and frame.dim is not None:
                        rank = max(rank, 1 - frame.dim)
        dim = -rank
        order = sorted(range(n), key=lambda k: requests[k][0].order)
        ordered = [requests[k] for k in order]
        positions = [r[0].order for r in ordered]

        def leading(t: Tensor, lead: int) -> Tensor:
            """``t`` (shaped like its site's full shape) with ``lead`` plate dims in front."""
            return t.reshape((1,) * lead + t.shape)

        def choose(msg):
            name = msg["name"]
            if isinstance(msg["fn"], _Subsample):
                return self.subsamples.get(name)
            site = self.sites.get(name)
            if site is None or site.noise is None:  # before every relaxed site
                return self._base_value(name)
            lead = rank - site.batch_ndim
            own = [k for k, r in enumerate(ordered) if r[0].name == name]
            later = sum(1 for p in positions if p < site.order)  # passes where it is later
            pieces = []
            if later:
                logits = site_logits(msg["fn"])
                own_temperature = site.estimator.relaxation_temperature(site)
                if own_temperature is None:
                    temps = [r[2] for r in ordered[:later]]
                    temperature = torch.stack(
                        [
                            torch.as_tensor(t, dtype=logits.dtype, device=logits.device)
                            for t in temps
                        ]
                    )
                    extra = rank - 1 + site.event_ndim - (1 if site.one_hot else 0)
                    temperature = temperature.reshape((later,) + (1,) * extra)
                    if later < n:
                        temperature = torch.cat(
                            [temperature, temperature[-1:].expand((n - later,) + (1,) * extra)]
                        )
                else:
                    temperature = own_temperature
                relaxation = site.relaxation(logits)
                noise = site.noise.expand(torch.broadcast_shapes(site.noise.shape, logits.shape))
                relaxed = relaxation.relax(relaxation.reparameterize(noise), temperature)
                pieces.append(relaxed.narrow(dim - site.event_ndim, 0, later))
            pieces += [leading(ordered[k][1], lead) for k in own]
            rest = n - later - len(own)
            if rest:
                base = leading(self._base_value(name), lead)
                pieces.append(base.expand((rest,) + base.shape[1:]))
            if len(pieces) == 1:
                return pieces[0]
            shape = torch.broadcast_shapes(*(p.shape[1:] for p in pieces))
            return torch.cat([p.expand(p.shape[:1] + shape) for p in pieces])

        def stacked(fn):
            def in_plate(*args, **kwargs):
                with pyro.plate(RELAXED_PLATE, n, dim=dim):
                    return fn(*args, **kwargs)

            return in_plate

        model_trace, guide_trace = self.run(choose, stacked)
        costs = cost_terms(model_trace, guide_trace, relaxed=True)
        plate = (RELAXED_PLATE, dim)
        # each cost is reduced once per plate layout, and each site's dependent costs are
        # added in one stacked sum: a chain of L sites has O(L^2) (site, cost) pairs
        reduced: dict[tuple, Tensor] = {}
        by_site: dict[str, Tensor] = {}
        signals: list[Tensor] = [None] * n  # type: ignore[list-item]
        for k, (site, _, _) in zip(order, ordered, strict=True):
            total = by_site.get(site.name)
            if total is None:
                keep = site.frames + (plate,)
                by_shape: dict[tuple, list[Tensor]] = {}
                for i, cost in enumerate(costs):
                    if site.name not in self.deps.get(cost.key, ()):
                        continue
                    part = reduced.get((keep, i))
                    if part is None:
                        part = reduced[keep, i] = reduce_to_frames(
                            cost.value, cost.frames, keep, rank
                        )
                    by_shape.setdefault(tuple(part.shape), []).append(part)
                for parts in by_shape.values():
                    part = parts[0] if len(parts) == 1 else torch.stack(parts).sum(0)
                    total = part if total is None else total + part
                if total is None:
                    total = site.value.new_zeros((1,) * rank)
                by_site[site.name] = total
            slot = sum(1 for j in order[: order.index(k)] if requests[j][0].name == site.name)
            first = sum(1 for p in positions if p < site.order)
            one = total.select(dim, first + slot if total.shape[dim] > 1 else 0)
            signals[k] = one.reshape(one.shape[one.dim() - site.batch_ndim :])
        return signals

    def mean_field(self) -> tuple[list[Cost], dict[str, Tensor]]:
        """The mean-field pass (every Bernoulli / one-hot value replaced by its mean, layer
        after layer), its relaxed cost terms and the mean values (for their gradients)."""
        if self._mean_field is None:
            means = {}

            def choose(msg):
                if isinstance(msg["fn"], _Subsample):
                    return self.subsamples.get(msg["name"])
                site = self.sites.get(msg["name"])
                if site is None or not is_relaxable(site.kind):
                    # Fresh draws keep the expansion point independent of every b.
                    return None
                mean = site.mean(site_logits(msg["fn"]))
                means[msg["name"]] = mean
                return mean

            model_trace, guide_trace = self.run(choose)
            self._mean_field = (cost_terms(model_trace, guide_trace, relaxed=True), means)
        return self._mean_field
