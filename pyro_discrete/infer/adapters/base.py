"""The adapter interface: how one estimator turns a discrete guide site into loss terms.

An adapter (a :class:`SiteEstimator` subclass with a ``name``) receives the step's
:class:`~pyro_discrete.infer.evaluation.Evaluation` and one
:class:`~pyro_discrete.infer.sites.DiscreteSite`, asks for whatever extra passes it needs,
calls the pure functions of :mod:`pyro_discrete.estimators`, and returns all of its
:class:`Terms`: the surrogate whose gradient is its estimate, its control-variate
objectives, and the running statistics it wants written once the step is accepted.
Estimators that act on the whole model (VIMCO's multi-sample bound) set ``model_level``
and implement :meth:`SiteEstimator.model_terms` instead. Subclasses register themselves
by name; a new estimator is one module in :mod:`pyro_discrete.estimators` and one here.
"""

from __future__ import annotations

import difflib
import math
import numbers
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from pyro_discrete.infer import control_variates as cv
from pyro_discrete.infer.sites import BERNOULLI, CATEGORICAL, ONE_HOT, SiteError, is_relaxable

#: estimator name -> adapter class, filled as adapter modules are imported
ESTIMATOR_CLASSES: dict[str, type[SiteEstimator]] = {}
#: other names users write for an estimator
ALIASES = {
    "gumbel_softmax": "gumbel",
    "concrete": "gumbel",
    "straight_through": "st",
    "loo": "rloo",
}


@dataclass
class Terms:
    """What an estimator adds to one step's loss.

    ``surrogate`` is maximised: its gradient with respect to the model and guide parameters
    is the estimate. ``fit_loss`` trains baselines by regression (its graph reaches only
    their parameters); ``control_variate_loss`` is minimised by the control-variate
    parameters (its gradient is the variance-objective gradient, see
    :func:`variance_gradient_loss`). ``updates`` are ``(param-store name, new value)``
    running statistics, written only once the step's loss is known to be finite.
    """

    surrogate: Tensor | float = 0.0
    fit_loss: Tensor | float = 0.0
    control_variate_loss: Tensor | float = 0.0
    updates: list[tuple[str, Tensor]] = field(default_factory=list)

    def __iadd__(self, other: Terms) -> Terms:
        self.surrogate = self.surrogate + other.surrogate
        self.fit_loss = self.fit_loss + other.fit_loss
        self.control_variate_loss = self.control_variate_loss + other.control_variate_loss
        self.updates.extend(other.updates)
        return self

    def loss(self) -> Tensor | float:
        """The quantity to minimise."""
        return -self.surrogate + self.fit_loss + self.control_variate_loss


def variance_gradient_loss(objective: Tensor, params: list[Tensor]) -> Tensor | float:
    r"""A term whose gradient in ``params`` is :math:`\partial_\phi` ``objective`` and
    which has no gradient elsewhere.

    For an unbiased estimator :math:`\partial_\phi \mathrm{Var}(\hat g) =
    \partial_\phi E[\hat g^2]`, so control variates are trained on the single-sample
    :math:`\hat g^2` (a double backward); the result is detached so that the model's
    parameters, which the objective also reaches, are not moved by it.
    """
    if not params:
        return 0.0
    grads = torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True)
    loss: Tensor | float = 0.0
    for g, p in zip(grads, params, strict=True):
        if g is not None:
            loss = loss + (g.detach() * p).sum()
    return loss


class SiteEstimator:
    """Base class of the adapters. Subclasses set ``name``, ``requires`` and ``defaults``
    and implement :meth:`site_terms` (or :meth:`model_terms`)."""

    name: ClassVar[str] = ""
    #: which leaf distributions the estimator handles: "any", "relaxable", "bernoulli"
    requires: ClassVar[str] = "any"
    #: the value itself carries the gradient (relaxations); the guide's log-density
    #: stays in the pathwise part of the surrogate
    pathwise: ClassVar[bool] = False
    #: needs several particles evaluated as one vectorised batch
    multi_sample: ClassVar[bool] = False
    #: why a step of this estimator cannot be recorded as a tensor program
    #: (:class:`~pyro_discrete.infer.CompiledSVI`), or ``None`` where it can
    not_compilable: ClassVar[str | None] = None
    #: the objective is a bound of the whole model: :meth:`model_terms` replaces the
    #: per-site sum, and every discrete site must use this estimator
    model_level: ClassVar[bool] = False
    #: a multi-sample estimator that can also draw its particles one at a time
    #: (``vectorize_particles=False``): it implements :meth:`particle_terms` (per site) or
    #: :meth:`model_particle_terms` (model level)
    loops_particles: ClassVar[bool] = False
    #: the base pass must draw the site through uniform noise that later passes re-use
    needs_noise: ClassVar[bool] = False
    #: which of Pyro's ``infer={"baseline": {...}}`` options the estimator honours
    baseline_options: ClassVar[tuple[str, ...]] = ()
    #: running statistics per site: name -> initial value (see :meth:`statistic`)
    running_state: ClassVar[dict[str, float]] = {}
    defaults: ClassVar[dict] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            ESTIMATOR_CLASSES[cls.name] = cls

    def __init__(self, site: str | None = None, **options):
        unknown = set(options) - set(self.defaults)
        if unknown:
            where = f" on site '{site}'" if site else ""
            valid = ", ".join(sorted(self.defaults)) or "none"
            hints = [
                f"{k!r} -> did you mean {m[0]!r}?"
                for k in sorted(unknown)
                if (m := difflib.get_close_matches(k, self.defaults, n=1))
            ]
            raise TypeError(
                f"estimator '{self.name}'{where} got unknown option(s) {sorted(unknown)}; "
                f"its options are: {valid}" + (f" ({'; '.join(hints)})" if hints else "")
            )
        check_option_types(self.name, site, self.defaults, options)
        self.options = {**self.defaults, **options}
        self.validate_options()
        self.networks: dict = {}  # control-variate networks by name

    def validate_options(self) -> None:
        for key in ("temperature", "min_temperature"):
            if key in self.options and not self.options[key] > 0:
                raise ValueError(f"estimator '{self.name}': {key} must be positive")

    # -- checks at the base pass --------------------------------------------------------

    def check_baseline_options(self, name: str, options: dict) -> None:
        """Refuse Pyro baseline options that this estimator would silently ignore."""
        ignored = sorted(set(options) - set(self.baseline_options))
        if ignored:
            honoured = ", ".join(self.baseline_options) or "none"
            raise SiteError(
                f"site '{name}' sets infer={{'baseline': {{...}}}} option(s) {ignored}, which "
                f"estimator '{self.name}' does not use (it honours: {honoured}); remove them, "
                "or use 'reinforce', which takes all of Pyro's baseline options"
            )

    def check_site(self, name: str, kind: str, dist_name: str) -> None:
        """Raise a :class:`SiteError` naming the site, its distribution and the fix."""
        if self.requires == "any":
            return
        if self.requires == "bernoulli" and kind != BERNOULLI:
            relaxations = (
                "; for a one-hot site, 'rebar' or 'relax' also work" if kind == ONE_HOT else ""
            )
            raise SiteError(
                f"site '{name}' has distribution {dist_name}; estimator '{self.name}' handles "
                "Bernoulli sites only: give this site a score-function estimator with "
                "infer={'estimator': 'rloo'} (or 'reinforce', 'nvil')" + relaxations
            )
        if kind == CATEGORICAL:
            raise SiteError(
                f"site '{name}' is an index-valued {dist_name}; estimator '{self.name}' "
                "needs a continuous relaxation of one-hot values: write the site with "
                "dist.OneHotCategorical(logits=...) (and use the one-hot value downstream), "
                "or give it a score-function estimator with infer={'estimator': 'reinforce'}"
            )
        if not is_relaxable(kind):
            raise SiteError(
                f"site '{name}' has distribution {dist_name}, which has no continuous "
                f"relaxation that estimator '{self.name}' could use: give this site a "
                "score-function estimator with infer={'estimator': 'reinforce'} "
                "(or 'nvil', 'rloo')"
            )

    # -- hooks --------------------------------------------------------------------------

    def base_value(self, site) -> Tensor:
        """The value the base pass gives the site (hard by default)."""
        return site.hard

    def continuous_value(self, site) -> Tensor | None:
        """The value the base pass gives a site with no relaxation (continuous, index
        categorical, Poisson, ...): ``None`` lets Pyro sample it; LAX draws it through a
        reparameterisable copy of its distribution."""
        return None

    def relaxation_temperature(self, site) -> Tensor | float | None:
        """The temperature at which this estimator wants ``site`` relaxed when another
        site's relaxed pass relaxes it (``None``: the relaxing estimator's own)."""
        return None

    def site_terms(self, ev, site) -> Terms:
        """The terms of one discrete site (per-site estimators)."""
        raise NotImplementedError(f"estimator '{self.name}' has no per-site terms")

    def model_terms(self, ev) -> tuple[Tensor, Terms]:
        """``(objective estimate, terms)`` for the whole model (``model_level`` estimators);
        the estimate is what the loss reports, already averaged over particles."""
        raise NotImplementedError(f"estimator '{self.name}' has no model-level terms")

    def end_step(self) -> None:
        """Called once after each gradient step."""

    # -- state --------------------------------------------------------------------------

    def state_name(self, site: str, what: str) -> str:
        return cv.state_name(self.name, site, what)

    def statistic(self, site, what: str, like: Tensor) -> Tensor:
        """The running statistic ``what`` (declared in ``running_state``) of ``site``, a
        scalar of ``like``'s dtype and device."""
        return cv.running_statistic(
            self.state_name(site.name, what), like, init=self.running_state[what]
        )


def check_option_types(estimator: str, site: str | None, defaults: dict, options: dict) -> None:
    """Refuse an option whose type differs from its default's: a number (finite, not a
    bool) where the default is a number, an int where it is an int, a bool where it is a
    bool, a sequence of positive ints where it is a tuple (layer widths)."""
    where = f"estimator '{estimator}'" + (f" on site '{site}'" if site else "")
    for key, value in options.items():
        default = defaults.get(key)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError(f"{where}: {key} must be True or False, got {value!r}")
        elif isinstance(default, (int, float)):
            if torch.is_tensor(value) and value.numel() == 1 and value.is_floating_point():
                number = float(value.detach())
            elif isinstance(value, numbers.Real) and not isinstance(value, bool):
                number = float(value)
            else:
                raise TypeError(
                    f"{where}: {key} must be a number (like its default {default!r}), got {value!r}"
                )
            if not math.isfinite(number):
                raise ValueError(f"{where}: {key} must be finite, got {value!r}")
            if isinstance(default, int) and not float(number).is_integer():
                raise TypeError(f"{where}: {key} must be a whole number, got {value!r}")
        elif isinstance(default, tuple):
            if not (
                isinstance(value, (tuple, list))
                and all(isinstance(h, int) and not isinstance(h, bool) for h in value)
            ):
                raise TypeError(
                    f"{where}: {key} must be a tuple of positive ints (layer widths, "
                    f"like its default {default!r}), got {value!r}"
                )
            if not all(h > 0 for h in value):
                raise ValueError(
                    f"{where}: {key} must be a tuple of positive ints (layer widths, "
                    f"like its default {default!r}), got {value!r}"
                )


def make_estimator(name: str, site: str | None = None, **options) -> SiteEstimator:
    """Build an estimator by name; an unknown name lists the valid ones and the closest."""
    name = ALIASES.get(name, name)
    cls = ESTIMATOR_CLASSES.get(name)
    if cls is None:
        valid = ", ".join(sorted(ESTIMATOR_CLASSES))
        close = difflib.get_close_matches(str(name), list(ESTIMATOR_CLASSES) + list(ALIASES), 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        where = f" on site '{site}'" if site else ""
        raise ValueError(f"unknown estimator {name!r}{where}{hint}; valid estimators: {valid}")
    return cls(site=site, **options)
