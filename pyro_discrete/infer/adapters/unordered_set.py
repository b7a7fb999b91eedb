r"""The unordered-set estimator as a site estimator (Kool, van Hoof, Welling, 2020). Unbiased.

A *root* is a site whose distribution is the same in every particle: it depends on no other
discrete site. Its ``K = num_particles`` particles are drawn without replacement within each
plate element (stochastic beam search over the site's event: Gumbel-top-:math:`k` for one
categorical, the joint value of a Bernoulli or categorical ``to_event`` block), so every
particle holds a different value, with the importance weights :math:`w_i` of the unordered
set (:mod:`pyro_discrete.estimators.unordered_set`). Where the domain has fewer than ``K``
values, the whole domain is taken (the site's estimate is then exact) and the remaining
particles repeat a value with weight 0.

Every cost term that depends on a root is re-weighted from the driver's particle mean
:math:`\frac1K\sum_i c_i` to :math:`\sum_i w_i c_i`. A *downstream* site (one that depends on
exactly one root) is drawn once per particle given that particle's values, and its score
term is weighted by the root's :math:`w_i`, with a baseline from the other particles (given
the root's set they are independent of this particle's draw). Together: the paper's
estimator for the root, and an unbiased estimate given the root's set for what lies below.

Which sites are roots is read from the dependency map of earlier steps. Before any is known
(the first step), a site whose logits are identical across particles and that comes first
among this estimator's sites is a root; a later one is drawn independently per particle with
uniform weights :math:`1/K` and a leave-one-out baseline (RLOO), which is also unbiased.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pyro.poutine.plate_messenger import PlateMessenger
from pyro.poutine.runtime import _PYRO_STACK
from torch import Tensor

from pyro_discrete import estimators as E
from pyro_discrete.infer.evaluation import GUIDE, DiscreteSite, Evaluation
from pyro_discrete.infer.site_estimators import SiteEstimator, StepTerms
from pyro_discrete.infer.sites import CATEGORICAL, SiteError

__all__ = ["UnorderedSet"]

#: the vectorised particle plate of :class:`pyro.infer.ELBO` (and of ``DiscreteELBO``)
PARTICLE_PLATE = "num_particles_vectorized"


@dataclass
class _Root:
    """A root site's particles in one step, quantities with the particle dim last."""

    particle_dim: int  # in the site's batch shape (negative)
    log_w: Tensor  # (..., K) log importance weights; -inf for padding
    # the set's probabilities, for the built-in baseline; None: drawn independently (RLOO)
    log_p: Tensor | None = None  # (..., K) log q of each particle's value
    log_p1: Tensor | None = None  # (..., K) log p^{D\s}(S\s)
    log_p2: Tensor | None = None  # (..., K, K) log p^{D\{s,s'}}(S\{s,s'})


def _particle_plate_dim() -> int | None:
    for frame in reversed(_PYRO_STACK):
        if isinstance(frame, PlateMessenger) and frame.name == PARTICLE_PLATE:
            return frame.dim
    return None


def _pad(x: Tensor, k: int, value: float, dims: tuple[int, ...]) -> Tensor:
    for dim in dims:
        missing = k - x.shape[dim]
        if missing > 0:
            shape = list(x.shape)
            shape[dim] = missing
            x = torch.cat([x, x.new_full(shape, value)], dim)
    return x


def _leave_one_out_mean(weight: Tensor, signal: Tensor, dim: int) -> Tensor:
    # sum_{j != i} w_j f_j / sum_{j != i} w_j along the particle dim (0 where no weight left)
    others = weight.sum(dim, keepdim=True) - weight
    weighted = (weight * signal).sum(dim, keepdim=True) - weight * signal
    return torch.where(others > 0, weighted / others.clamp(min=1e-30), 0.0)


class UnorderedSet(SiteEstimator):
    r"""The unordered-set estimator (Kool, van Hoof, Welling 2020): ``num_particles`` = K
    distinct samples without replacement, their importance weights and built-in baseline.
    **Unbiased.**

    For Bernoulli and one-hot categorical sites (with any ``to_event`` dims: the event of a
    plate element is one joint value, drawn by stochastic beam search). A site that depends
    on no other discrete site is sampled without replacement; a site below exactly one such
    site is sampled per particle and weighted by that site's set. Refused with a
    :class:`SiteError`: a site below no such site or below two, a cost term shared by two
    set-sampled sites or lying outside a set-sampled site's plates, and another estimator on
    a site that shares cost terms with a set-sampled site (its particle average would need
    the set's weights): use ``'rloo'`` there. The loss the driver reports is the plain
    particle mean of the ELBO, not the set-weighted one; the gradient is unbiased.

    Options: ``method`` (``"auto"``: the set probabilities exactly for sets of up to 4,
    by numerical integration beyond; ``"exact"``; ``"integrate"``) and
    ``integration_step`` (0.25, in :math:`\log(-\log u)`).
    """

    name = "unordered_set"
    requires = "relaxable"
    multi_sample = True
    needs_noise = True
    defaults = {"method": "auto", "integration_step": 0.25}

    def __init__(self, **options):
        super().__init__(**options)
        self._roots: dict[str, _Root] = {}  # this step's root candidates
        self._parents: dict[str, frozenset] = {}  # discrete sites each site depends on
        self._this_pass: list[str] = []  # sites seen in the current guide run

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
        if site.name in self._this_pass:  # a new run of the guide
            self._this_pass.clear()
        first = not self._this_pass
        self._this_pass.append(site.name)
        self._roots.pop(site.name, None)
        dim = _particle_plate_dim()
        if dim is None:
            return site.hard  # the driver refuses multi-sample estimators without particles
        batch_pos = site.batch_ndim + dim
        logits = site.logits.detach()
        if not bool((logits == logits.narrow(batch_pos, 0, 1)).all()):
            return site.hard  # a downstream site: one draw per particle
        parents = self._parents.get(site.name)
        k = logits.shape[batch_pos]
        if parents or (parents is None and not first):
            # Equal logits by coincidence below another site, or not known yet: draw
            # independently; should it be a root, it gets weights 1/K (RLOO).
            batch = site.fn.batch_shape
            outer = batch[:batch_pos] + batch[batch_pos + 1 :]
            uniform = logits.new_full(outer + (k,), -math.log(k))
            self._roots[site.name] = _Root(dim, uniform)
            return site.hard
        value, root = self._draw_set(site, logits.narrow(batch_pos, 0, 1), batch_pos, dim, k)
        self._roots[site.name] = root
        site.hard = value
        return value

    def _draw_set(self, site, logits, batch_pos, dim, k) -> tuple[Tensor, _Root]:
        logits = logits.squeeze(batch_pos)
        values, log_p, log_rest = E.event_without_replacement(
            logits, k, site.one_hot, site.event_ndim
        )
        log_ps, log_p1, log_p2 = E.unordered_set_log_probs(
            log_p, log_rest, self.options["method"], self.options["integration_step"]
        )
        log_w = E.unordered_set_weights(log_p, log_ps, log_p1)
        size, set_dim = log_p.shape[-1], log_p.dim() - 1  # values: (outer, size, event)
        if size < k:  # the whole domain is drawn; the other particles repeat it, weight 0
            shape = list(values.shape)
            shape[set_dim] = k - size
            values = torch.cat([values, values.narrow(set_dim, 0, 1).expand(shape)], set_dim)
        values = values.movedim(set_dim, batch_pos)
        root = _Root(
            particle_dim=dim,
            log_w=_pad(log_w, k, -math.inf, (-1,)),
            log_p=_pad(log_p, k, -math.inf, (-1,)),
            log_p1=_pad(log_p1, k, 0.0, (-1,)),
            log_p2=_pad(log_p2, k, -math.inf, (-1, -2)),
        )
        return values, root

    # -- the surrogate ------------------------------------------------------------------------

    @staticmethod
    def _resolve_roots(ev: Evaluation) -> dict[str, _Root]:
        """This step's roots: candidates that depend on no other discrete site."""
        roots = {}
        for name, site in ev.sites.items():
            if not isinstance(site.estimator, UnorderedSet):
                continue
            parents = ev.deps.get((GUIDE, name), frozenset()) - {name}
            site.estimator._parents[name] = parents
            root = site.estimator._roots.get(name)
            if root is None:
                continue
            if not parents:
                roots[name] = root
            elif root.log_p is not None:
                raise SiteError(
                    f"site '{name}' was drawn without replacement as a site that depends on "
                    f"no other discrete site, but it depends on {sorted(parents)}: the ELBO "
                    "object was last used with a guide of another structure, or a site before "
                    "it uses another estimator; use a new DiscreteELBO for each guide, or "
                    f"'rloo' for '{name}'"
                )
        return roots

    def surrogate(self, ev: Evaluation, site: DiscreteSite, terms: StepTerms) -> Tensor:
        roots = self._resolve_roots(ev)
        node = ev.guide_trace.nodes[site.name]
        k = node["value"].shape[site.batch_ndim + ev.particle_dim(site)]
        if site.name in roots:
            return self._root_surrogate(ev, site, roots, k)
        return self._downstream_surrogate(ev, site, roots, k)

    def _reweighted_costs(self, ev, site, roots) -> list:
        """The costs that depend on the root and that the driver averages over particles;
        refuses the costs that no weighting by this root's set can make unbiased."""
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
                other_site = ev.sites[other]
                if not isinstance(other_site.estimator, UnorderedSet) or other in roots:
                    raise SiteError(
                        f"site '{other}' (estimator '{other_site.estimator.name}') shares "
                        f"the {cost.key[0]} cost of '{cost.key[1]}' with site '{site.name}', "
                        "whose particles 'unordered_set' draws without replacement: "
                        "averaging its particles would need that set's weights. Use "
                        f"'unordered_set' for '{other}' only below '{site.name}' (its "
                        "distribution then depends on it), or 'rloo' for both"
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
        if root.log_p is not None:
            baseline = E.unordered_set_baseline(root.log_p, root.log_p1, root.log_p2, signal)
        else:  # drawn independently: RLOO
            baseline = _leave_one_out_mean(root.log_w.exp(), signal, -1)
        surrogate = k * E.unordered_set_surrogate(log_q, root.log_w, signal, baseline)
        # The driver divides by K the particle sum of every pathwise cost: make that
        # sum_i w_i c_i for the costs that depend on this root (a no-op for weights 1/K).
        factor = (k * root.log_w.exp() - 1).movedim(-1, batch_pos)
        for cost in reweighted:
            surrogate = surrogate + (factor * cost.value).sum()
        return surrogate

    def _downstream_surrogate(self, ev, site, roots, k) -> Tensor:
        upstream = ev.deps.get((GUIDE, site.name), frozenset()) - {site.name}
        above = sorted(upstream & set(roots))
        if len(above) != 1:
            found = (
                f"it depends on {len(above)} sites drawn without replacement ({above})"
                if above
                else "no site it depends on is drawn without replacement"
                + (f" (it depends on {sorted(upstream)})" if upstream else "")
            )
            raise SiteError(
                f"site '{site.name}' ({type(site.fn).__name__}) has logits that differ across "
                f"the {k} particles, so its particles cannot be drawn without replacement from "
                f"one distribution, and {found}; estimator 'unordered_set' handles such a site "
                "only below exactly one site drawn without replacement, whose set weights "
                f"it. Use 'rloo' for '{site.name}' and the sites it depends on"
            )
        root_site = ev.sites[above[0]]
        root = roots[root_site.name]
        missing = [name for name, _ in root_site.frames if (name, _) not in site.frames]
        if missing:
            raise SiteError(
                f"site '{site.name}' depends on site '{root_site.name}' but lies outside its "
                f"plate(s) {missing}; estimator 'unordered_set' cannot weight it: use 'rloo'"
            )
        root_pos = root_site.batch_ndim + root.particle_dim
        weight = root.log_w.exp().movedim(-1, root_pos)
        batch_shape = site.fn.batch_shape
        weight = weight.expand(torch.broadcast_shapes(weight.shape, batch_shape))
        signal = ev.signal(site).expand(batch_shape).detach()
        # given the root's set, the other particles are independent of this particle's draw
        baseline = _leave_one_out_mean(weight, signal, root.particle_dim)
        coefficient = (k * weight * (signal - baseline)).detach()
        return (coefficient * ev.score(site)).sum()
