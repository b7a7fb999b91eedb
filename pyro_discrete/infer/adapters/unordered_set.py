r"""The unordered-set estimator as a site estimator (Kool, van Hoof, Welling, 2020). Unbiased.

The guide's discrete sites that use this estimator fall into *groups*: sites connected by
shared cost terms (a site and those it depends on always share one, its own log-density).
In each group the first site in guide order, the *root*, depends on no other discrete site,
so its distribution is the same in every particle: its ``K = num_particles`` particles are
drawn without replacement within each plate element (stochastic beam search over the
site's event: Gumbel-top-:math:`k` for one categorical, the joint value of a ``to_event``
block), so every particle holds a different value, with the importance weights :math:`w_i`
of the unordered set (:mod:`pyro_discrete.estimators.unordered_set`). Where the domain has
fewer than ``K`` values, the whole domain is taken (the root's estimate is then exact) and
the remaining particles repeat its values in turn, each value's weight shared equally by
the particles that hold it (their later sites are then averaged over more draws).

Every cost term that depends on the root is re-weighted from the driver's particle mean
:math:`\frac1K\sum_i c_i` to :math:`\sum_i w_i c_i`. The other sites of the group are drawn
once per particle given that particle's values; given the root's set the particles are
independent, so their score terms weighted by :math:`w_i`, with a baseline from the other
particles, are unbiased. A site of no group with a set (e.g. below a continuous site) is
drawn per particle with weights :math:`1/K`: RLOO.

The groups are read from the dependency map of the previous step; on the first step every
site is drawn per particle (weights :math:`1/K`, also unbiased).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro.poutine.plate_messenger import PlateMessenger
from pyro.poutine.runtime import _PYRO_STACK
from torch import Tensor

from pyro_discrete import estimators as E
from pyro_discrete.infer.adapters.base import SiteEstimator, Terms
from pyro_discrete.infer.evaluation import GUIDE, DiscreteSite, Evaluation
from pyro_discrete.infer.sites import CATEGORICAL, SiteError

__all__ = ["UnorderedSet"]

#: the vectorised particle plate of :class:`pyro.infer.ELBO` (and of ``DiscreteELBO``)
PARTICLE_PLATE = "num_particles_vectorized"


@dataclass
class _Root:
    """A root's set in one step, its quantities with the particle / set dim last."""

    particle_dim: int  # in the site's batch shape (negative)
    log_w: Tensor  # (..., K) log weight of each particle: w_s / (particles holding s)
    log_p: Tensor  # (..., k) log q of each value of the set (k = min(K, domain size))
    log_p1: Tensor  # (..., k) log p^{D\s}(S\s)
    log_p2: Tensor  # (..., k, k) log p^{D\{s,s'}}(S\{s,s'})
    holds: Tensor  # (K, k) one-hot: which value of the set each particle holds


@dataclass(frozen=True)
class _Structure:
    """What the previous step's dependency map said about a site."""

    parents: frozenset  # discrete sites its distribution depends on
    group: frozenset  # the sites of this estimator connected to it by shared costs


def _particle_plate_dim() -> int | None:
    for frame in reversed(_PYRO_STACK):
        if isinstance(frame, PlateMessenger) and frame.name == PARTICLE_PLATE:
            return frame.dim
    return None


def _leave_one_out_mean(weight: Tensor, signal: Tensor, dim: int) -> Tensor:
    # sum_{j != i} w_j f_j / sum_{j != i} w_j along the particle dim (0 where no weight left)
    others = weight.sum(dim, keepdim=True) - weight
    weighted = (weight * signal).sum(dim, keepdim=True) - weight * signal
    return torch.where(others > 0, weighted / others.clamp(min=1e-30), 0.0)


def _groups(ev: Evaluation, names: set) -> dict[str, frozenset]:
    """Connected components of ``names`` under "appear together in a cost's dependencies"."""
    parent = {name: name for name in names}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for deps in ev.deps.values():
        members = sorted(deps & names)
        for other in members[1:]:
            parent[find(other)] = find(members[0])
    groups: dict[str, set] = {}
    for name in names:
        groups.setdefault(find(name), set()).add(name)
    return {name: frozenset(groups[find(name)]) for name in names}


class UnorderedSet(SiteEstimator):
    r"""The unordered-set estimator (Kool, van Hoof, Welling 2020): ``num_particles`` = K
    distinct samples without replacement, their importance weights and built-in baseline.
    **Unbiased.**

    For Bernoulli and one-hot categorical sites (with any ``to_event`` dims: the event of a
    plate element is one joint value, drawn by stochastic beam search). In each group of
    sites connected by shared cost terms, the first (which depends on no other discrete
    site) is drawn without replacement and the others per particle, weighted by its set
    (see :mod:`pyro_discrete.infer.adapters.unordered_set`). Refused with a
    :class:`SiteError`: a cost term depending on two sets, or lying outside the plates of a
    set it depends on, and another estimator on a site sharing cost terms with a set (its
    particle average would need the set's weights): use ``'rloo'`` there. The loss the
    driver reports is the plain particle mean of the ELBO, not the set-weighted one; the
    gradient is unbiased. Variance: the paper's estimator at the set-drawn site (far below
    RLOO's for a single site); the sites below it see their particles weighted by the set's
    probabilities, which can cost variance against RLOO when those are very unequal.

    Options: ``method`` (``"auto"``: the set probabilities exactly for sets of up to 4,
    by numerical integration beyond; ``"exact"``; ``"integrate"``) and
    ``integration_step`` (0.25, in :math:`\log(-\log u)`).
    """

    name = "unordered_set"
    requires = "relaxable"
    not_compilable = (
        "it decides on the host, from the logits' values, whether the particles can share "
        "one set drawn without replacement"
    )
    multi_sample = True
    needs_noise = True
    defaults = {"method": "auto", "integration_step": 0.25}

    def __init__(self, site: str | None = None, **options):
        super().__init__(site=site, **options)
        self._roots: dict[str, _Root] = {}  # the sets drawn in the current guide run
        self._structure: dict[str, _Structure] = {}  # from the previous step
        self._this_run: list[str] = []

    def validate_options(self) -> None:
        if self.options["method"] not in ("auto", "exact", "integrate"):
            raise ValueError(
                "estimator 'unordered_set': method must be 'auto', 'exact' or 'integrate', "
                f"got {self.options['method']!r}"
            )
        if not self.options["integration_step"] > 0:
            raise ValueError("estimator 'unordered_set': integration_step must be positive")

    def check_site(self, name: str, kind: str, dist_name: str) -> None:
        if kind == CATEGORICAL:
            raise SiteError(
                f"site '{name}' is an index-valued {dist_name}; estimator 'unordered_set' "
                "chooses the values of Bernoulli and one-hot sites only: write it as "
                "dist.OneHotCategorical(logits=...), or use infer={'estimator': 'rloo'}"
            )
        super().check_site(name, kind, dist_name)

    # -- the base pass ----------------------------------------------------------------------

    def base_value(self, site: DiscreteSite) -> Tensor:
        if site.name in self._this_run:  # a new run of the guide
            self._this_run.clear()
            self._roots.clear()
        self._this_run.append(site.name)
        self._roots.pop(site.name, None)
        dim = _particle_plate_dim()
        known = self._structure.get(site.name)
        if dim is None or known is None or known.parents or not site.logits.numel():
            return site.hard  # drawn per particle (or nothing to draw)
        if any(name in self._roots for name in known.group):
            return site.hard  # its group's set is drawn already
        batch_pos = site.batch_ndim + dim
        logits = site.logits.detach()
        if not bool((logits == logits.narrow(batch_pos, 0, 1)).all()):
            return site.hard  # its distribution differs across particles after all
        value, root = self._draw_set(site, logits.narrow(batch_pos, 0, 1), batch_pos, dim)
        self._roots[site.name] = root
        site.hard = value
        return value

    def _draw_set(self, site, logits, batch_pos, dim) -> tuple[Tensor, _Root]:
        k = site.logits.shape[batch_pos]
        values, log_p, log_rest = E.event_without_replacement(
            logits.squeeze(batch_pos), k, site.one_hot, site.event_ndim
        )
        log_ps, log_p1, log_p2 = E.unordered_set_log_probs(
            log_p, log_rest, self.options["method"], self.options["integration_step"]
        )
        log_w = E.unordered_set_weights(log_p, log_ps, log_p1)
        # Particles beyond the domain's size hold its values in turn and share their weight.
        size, set_dim = log_p.shape[-1], log_p.dim() - 1  # values: (outer, size, event)
        which = torch.arange(k, device=log_p.device) % size
        holds = torch.nn.functional.one_hot(which, size).to(log_p.dtype)
        log_w = (log_w - holds.sum(0).log())[..., which]
        root = _Root(dim, log_w, log_p, log_p1, log_p2, holds)
        return values.index_select(set_dim, which).movedim(set_dim, batch_pos), root

    # -- the surrogate ------------------------------------------------------------------------

    @staticmethod
    def _sets_of_this_step(ev: Evaluation) -> dict[str, _Root]:
        """The sets drawn in this step; records the structure for the next one."""
        mine = {n for n, s in ev.sites.items() if isinstance(s.estimator, UnorderedSet)}
        groups = _groups(ev, mine)
        roots = {}
        for name in mine:
            estimator = ev.sites[name].estimator
            parents = ev.deps.get((GUIDE, name), frozenset()) - {name}
            estimator._structure[name] = _Structure(parents, groups[name])
            root = estimator._roots.get(name)
            if root is None:
                continue
            if parents:
                raise SiteError(
                    f"site '{name}' was drawn without replacement as a site that depends on "
                    f"no other discrete site, but it depends on {sorted(parents)}: this "
                    "DiscreteELBO was last used with a guide of another structure; use one "
                    "DiscreteELBO per guide"
                )
            roots[name] = root
        return roots

    def site_terms(self, ev: Evaluation, site: DiscreteSite) -> Terms:
        roots = self._sets_of_this_step(ev)
        node = ev.guide_trace.nodes[site.name]
        k = node["value"].shape[site.batch_ndim + ev.particle_dim(site)]
        if site.name in roots:
            return Terms(surrogate=self._root_surrogate(ev, site, roots, k))
        return Terms(surrogate=self._weighted_surrogate(ev, site, roots, k))

    def _reweighted_costs(self, ev, site, roots) -> list:
        """The costs that depend on the root and that the driver averages over particles;
        refuses those that no weighting by this root's set makes unbiased."""
        reweighted = []
        for cost in ev.costs:
            deps = ev.deps.get(cost.key, frozenset())
            if site.name not in deps:
                continue
            missing = [name for name, _ in site.frames if (name, _) not in cost.frames]
            if missing:
                raise SiteError(
                    f"the {cost.key[0]} cost of site '{cost.key[1]}' depends on site "
                    f"'{site.name}' but lies outside its plate(s) {missing}; estimator "
                    "'unordered_set' weights each plate element's particles separately and "
                    f"cannot weight it: use 'rloo' for '{site.name}'"
                )
            for other in sorted(deps - {site.name}):
                estimator = ev.sites[other].estimator
                if not isinstance(estimator, UnorderedSet) or other in roots:
                    raise SiteError(
                        f"site '{other}' (estimator '{estimator.name}') shares the "
                        f"{cost.key[0]} cost of '{cost.key[1]}' with site '{site.name}', whose "
                        "particles 'unordered_set' draws without replacement: averaging its "
                        "particles would need that set's weights. Use 'unordered_set' for "
                        f"'{other}' too (it is then weighted by the set of '{site.name}'), or "
                        "'rloo' for both"
                    )
            discrete = ev.sites.get(cost.key[1]) if cost.key[0] == GUIDE else None
            if discrete is None or discrete.estimator.pathwise:
                reweighted.append(cost)
        return reweighted

    def _root_surrogate(self, ev, site, roots, k) -> Tensor:
        root = roots[site.name]
        reweighted = self._reweighted_costs(ev, site, roots)
        batch_pos = site.batch_ndim + root.particle_dim
        batch_shape = site.fn.batch_shape
        signal = ev.signal(site).expand(batch_shape).movedim(batch_pos, -1).detach()
        log_q = ev.score(site).expand(batch_shape).movedim(batch_pos, -1)
        # each value's signal: the mean over the particles that hold it
        per_value = (signal @ root.holds) / root.holds.sum(0)
        baseline = E.unordered_set_baseline(root.log_p, root.log_p1, root.log_p2, per_value)
        baseline = baseline @ root.holds.T  # back to the particles
        surrogate = k * E.unordered_set_surrogate(log_q, root.log_w, signal, baseline)
        # The driver divides by K the particle sum of every pathwise cost: make that
        # sum_i w_i c_i for the costs that depend on this root.
        factor = (k * root.log_w.exp() - 1).movedim(-1, batch_pos)
        for cost in reweighted:
            surrogate = surrogate + (factor * cost.value).sum()
        return surrogate

    def _weighted_surrogate(self, ev, site, roots, k) -> Tensor:
        """A site drawn per particle: score terms weighted by the one set its costs depend
        on (weights 1/K, i.e. RLOO, when none)."""
        touching = set()
        for deps in ev.deps.values():
            if site.name in deps:
                touching |= deps & set(roots)
        batch_shape = site.fn.batch_shape
        pdim = ev.particle_dim(site)
        if len(touching) > 1:
            raise SiteError(
                f"site '{site.name}' shares cost terms with {len(touching)} sites drawn "
                f"without replacement ({sorted(touching)}): its particles would need the "
                "weights of both sets; estimator 'unordered_set' draws one set per group of "
                f"sites connected by cost terms. Use 'rloo' for '{site.name}' and those sites"
            )
        if touching:
            root_site = ev.sites[touching.pop()]
            root = roots[root_site.name]
            missing = [name for name, _ in root_site.frames if (name, _) not in site.frames]
            if missing:
                raise SiteError(
                    f"site '{site.name}' shares cost terms with site '{root_site.name}' but "
                    f"lies outside its plate(s) {missing}; estimator 'unordered_set' cannot "
                    f"weight it: use 'rloo' for '{site.name}' and '{root_site.name}'"
                )
            weight = root.log_w.exp().movedim(-1, root_site.batch_ndim + root.particle_dim)
            weight = weight.expand(torch.broadcast_shapes(weight.shape, batch_shape))
        else:
            weight = site.value.new_full(batch_shape, 1.0 / k)
        signal = ev.signal(site).expand(batch_shape).detach()
        # given the root's set the other particles are independent of this particle's draw
        baseline = _leave_one_out_mean(weight, signal, pdim)
        coefficient = (k * weight * (signal - baseline)).detach()
        return (coefficient * ev.score(site)).sum()
