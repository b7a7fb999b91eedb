r"""The unordered-set estimator as a site estimator (Kool, van Hoof, Welling, 2020). Unbiased.

A *root* site is one whose distribution is the same in every particle (its logits do not
depend on anything sampled per particle). Its ``K = num_particles`` particles are drawn
without replacement (stochastic beam search over the site's event within each plate
element: Gumbel-top-:math:`k` for one categorical, a product of categoricals or the bits of
a Bernoulli event), so every particle of a plate element holds a different value, and the
particles get the importance weights :math:`w_i` of the unordered set
(:mod:`pyro_discrete.estimators.unordered_set`). Where the domain has fewer than ``K``
values, the whole domain is taken (the estimate is then exact for this site) and the
remaining particles repeat a value with weight 0.

Every cost term that depends on the root is re-weighted from the driver's particle mean
:math:`\frac1K\sum_i c_i` to :math:`\sum_i w_i c_i`; a *downstream* site (one whose logits
depend on a single root, hence differ across particles) is drawn independently in each
particle given the root's value, and its score-function term is weighted by the root's
:math:`w_i` with a baseline from the other particles (independent of its own draw given
the set). Together this is the estimator of the paper for the root, and an unbiased
estimate, conditionally on the root's set, for everything below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
class _Set:
    """One root site's set in one step: its quantities with the particle dim last."""

    particle_dim: int  # in the site's batch shape (negative)
    log_p: Tensor  # (..., K) log q of each particle's value; -inf for padding
    log_p1: Tensor  # (..., K) log p^{D\s}(S\s)
    log_p2: Tensor  # (..., K, K) log p^{D\{s,s'}}(S\{s,s'})
    log_w: Tensor  # (..., K) log importance weights, -inf for padding


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


class UnorderedSet(SiteEstimator):
    r"""The unordered-set estimator (Kool, van Hoof, Welling 2020): ``num_particles`` = K
    distinct samples without replacement, their importance weights and built-in baseline.
    **Unbiased.**

    For Bernoulli and one-hot categorical sites (with any ``to_event`` dims: the event of a
    plate element is one joint value, drawn by stochastic beam search). A site whose
    distribution is the same in every particle is sampled without replacement; a site
    below exactly one such site is sampled per particle and weighted by that site's set.
    Refused with a :class:`SiteError`: a site whose distribution differs across particles
    without depending on exactly one set-sampled site, a cost outside a set-sampled site's
    plates that depends on it, and another estimator on a site sharing cost terms with it
    (their particle averages would need the set's weights): use ``'rloo'`` there.

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
        self._sets: dict[str, _Set] = {}

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

    # -- the base pass: draw a root's particles without replacement -------------------------

    def base_value(self, site: DiscreteSite) -> Tensor:
        self._sets.pop(site.name, None)
        dim = _particle_plate_dim()
        if dim is None:
            return site.hard  # the driver refuses multi-sample estimators without particles
        batch_pos = site.batch_ndim + dim
        logits = site.logits
        if not bool((logits == logits.narrow(batch_pos, 0, 1)).all()):
            return site.hard  # a downstream site: one draw per particle, weighted at its root
        value, state = self._sample_set(site, logits.narrow(batch_pos, 0, 1), batch_pos, dim)
        self._sets[site.name] = state
        site.hard = value
        return value

    def _sample_set(self, site, logits, batch_pos, dim):
        k = site.logits.shape[batch_pos]
        logits = logits.squeeze(batch_pos).detach()
        if site.one_hot:
            event = logits.shape[logits.dim() - site.event_ndim :]
            log_probs = torch.log_softmax(logits, -1)
            outer = logits.shape[: logits.dim() - site.event_ndim]
            log_probs = log_probs.reshape(outer + (-1, event[-1]))
        else:
            event = logits.shape[logits.dim() - site.event_ndim :]
            outer = logits.shape[: logits.dim() - site.event_ndim]
            flat = logits.reshape(outer + (-1,))
            log_probs = torch.stack([F.logsigmoid(-flat), F.logsigmoid(flat)], -1)
        d, n = log_probs.shape[-2:]
        sequences, log_p = E.stochastic_beam_search(log_probs, k)
        size = sequences.shape[-2]
        log_rest = self._log_rest(log_probs, sequences, log_p, n**d if d * math.log(n) < 60 else 0)
        log_ps, log_p1, log_p2 = E.unordered_set_log_probs(
            log_p, log_rest, self.options["method"], self.options["integration_step"]
        )
        log_w = E.unordered_set_weights(log_p, log_ps, log_p1)
        # values: (outer, size, event) -> the particle dim of the site's shape
        if site.one_hot:
            value = F.one_hot(sequences, n).to(logits.dtype).reshape(outer + (size,) + event)
        else:
            value = sequences.to(logits.dtype).reshape(outer + (size,) + event)
        if size < k:  # the whole domain is drawn; the other particles repeat it, weight 0
            repeat = value.narrow(len(outer), 0, 1)
            repeat = repeat.expand(outer + (k - size,) + event)
            value = torch.cat([value, repeat], len(outer))
        value = value.movedim(len(outer), batch_pos)
        state = _Set(
            particle_dim=dim,
            log_p=_pad(log_p, k, -math.inf, (-1,)),
            log_p1=_pad(log_p1, k, 0.0, (-1,)),
            log_p2=_pad(log_p2, k, -math.inf, (-1, -2)),
            log_w=_pad(log_w, k, -math.inf, (-1,)),
        )
        return value, state

    @staticmethod
    def _log_rest(log_probs, sequences, log_p, domain_size) -> Tensor:
        """log of the mass outside the set."""
        if sequences.shape[-2] == domain_size:
            return torch.full_like(log_p[..., 0], -math.inf)
        if log_probs.shape[-2] == 1:  # one categorical: sum the others exactly
            taken = F.one_hot(sequences[..., 0], log_probs.shape[-1]).sum(-2).bool()
            return log_probs[..., 0, :].masked_fill(taken, -math.inf).logsumexp(-1)
        total = log_p.logsumexp(-1).clamp(max=0.0)
        return torch.log(-torch.expm1(total))

    # -- the surrogate ------------------------------------------------------------------------

    @staticmethod
    def _roots(ev: Evaluation) -> dict[str, _Set]:
        roots = {}
        for name, other in ev.sites.items():
            sets = getattr(other.estimator, "_sets", None)
            if isinstance(other.estimator, UnorderedSet) and name in sets:
                roots[name] = sets[name]
        return roots

    def surrogate(self, ev: Evaluation, site: DiscreteSite, terms: StepTerms) -> Tensor:
        roots = self._roots(ev)
        k = ev.guide_trace.nodes[site.name]["value"].shape[site.batch_ndim + ev.particle_dim(site)]
        if site.name in roots:
            return self._root_surrogate(ev, site, roots, k)
        return self._downstream_surrogate(ev, site, roots, k)

    def _check_root_costs(self, ev, site, roots) -> list:
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
                reweighted.append(cost)  # the driver averages these over the particles
        return reweighted

    def _root_surrogate(self, ev, site, roots, k) -> Tensor:
        state = roots[site.name]
        reweighted = self._check_root_costs(ev, site, roots)
        batch_pos = site.batch_ndim + state.particle_dim
        batch_shape = site.fn.batch_shape
        signal = ev.signal(site).expand(batch_shape).movedim(batch_pos, -1)
        log_q = ev.score(site).expand(batch_shape).movedim(batch_pos, -1)
        baseline = E.unordered_set_baseline(state.log_p, state.log_p1, state.log_p2, signal)
        surrogate = k * E.unordered_set_surrogate(log_q, state.log_w, signal, baseline)
        # The driver divides by K the sum over particles of every pathwise cost: turn that
        # into sum_i w_i c_i for the costs that depend on this site.
        factor = (k * state.log_w.exp() - 1).movedim(-1, batch_pos).detach()
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
        root = ev.sites[above[0]]
        state = roots[root.name]
        missing = [name for name, _ in root.frames if (name, _) not in site.frames]
        if missing:
            raise SiteError(
                f"site '{site.name}' depends on site '{root.name}' but lies outside its "
                f"plate(s) {missing}; estimator 'unordered_set' cannot weight it: use 'rloo'"
            )
        root_pos = root.batch_ndim + state.particle_dim
        weight = state.log_w.exp().movedim(-1, root_pos).detach()
        batch_shape = site.fn.batch_shape
        pdim = state.particle_dim
        weight = weight.expand(torch.broadcast_shapes(weight.shape, batch_shape))
        signal = ev.signal(site).expand(batch_shape).detach()
        # A baseline from the other particles: given the root's set they are independent of
        # this particle's draw, so it keeps the estimate unbiased.
        others = weight.sum(pdim, keepdim=True) - weight
        weighted = (weight * signal).sum(pdim, keepdim=True) - weight * signal
        baseline = torch.where(others > 0, weighted / others.clamp(min=1e-30), 0.0)
        coefficient = (k * weight * (signal - baseline)).detach()
        return (coefficient * ev.score(site)).sum()
