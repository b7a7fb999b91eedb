"""VIMCO: the multi-sample bound of the whole model (a model-level adapter)."""

from __future__ import annotations

import torch

from pyro_discrete import estimators as E
from pyro_discrete.infer.adapters.base import SiteEstimator, Terms
from pyro_discrete.infer.evaluation import reduce_to_frames
from pyro_discrete.infer.sites import SiteError


class VIMCO(SiteEstimator):
    r"""VIMCO (Mnih & Rezende 2016): the K-sample importance-weighted bound with per-sample
    leave-one-out baselines. Optimises the IWAE bound, not the ELBO, so every discrete
    guide site of the model must use it; the reported loss is minus that bound.

    The bound is per datum when every cost term shares the data plate (all latents local)
    and joint otherwise. The particles are one vectorised batch by default;
    ``vectorize_particles=False`` draws them one after another (for models that index
    tables with sampled values) and computes the same bound across them.
    """

    name = "vimco"
    multi_sample = True
    model_level = True

    loops_particles = True

    @staticmethod
    def _check_sites(ev) -> None:
        for site in ev.sites.values():
            if not isinstance(site.estimator, VIMCO):
                raise SiteError(
                    "estimator 'vimco' optimises the multi-sample bound of the whole model, "
                    f"so every discrete guide site must use it; site '{site.name}' uses "
                    f"'{site.estimator.name}'"
                )

    def model_particle_terms(self, evs):
        """The bound over particles evaluated one at a time (``vectorize_particles=False``):
        each particle's log-weight, reduced as in :meth:`model_terms`, stacked on a new
        leading dim."""
        for ev in evs:
            self._check_sites(ev)
        frames = [set(c.frames) for ev in evs for c in ev.costs]
        keep = tuple(set.intersection(*frames)) if frames else ()
        ndim = -min((d for _, d in keep), default=0)
        log_w, log_q = [], []
        for ev in evs:
            w = sum((reduce_to_frames(c.value, c.frames, keep, ndim) for c in ev.costs), 0.0)
            q = sum(
                (reduce_to_frames(ev.score(s), s.frames, keep, ndim) for s in ev.sites.values()),
                0.0,
            )
            w = torch.as_tensor(w)
            log_w.append(w)
            log_q.append(torch.as_tensor(q, dtype=w.dtype).expand(w.shape))
        log_w = torch.stack(torch.broadcast_tensors(*log_w))
        log_q = torch.stack(torch.broadcast_tensors(*log_q))
        surrogate, bound = E.vimco_surrogate(log_w, log_q, 0)
        return bound.sum().detach(), Terms(surrogate=surrogate)

    def model_terms(self, ev):
        self._check_sites(ev)
        particle = ev.particle_frame
        common = {particle}
        if ev.costs:
            common |= set.intersection(*(set(c.frames) for c in ev.costs))
        # Reduce to the plates every cost shares, spanning the particle dim.
        keep = tuple(common)
        ndim = -min(d for _, d in keep)
        log_w = sum(reduce_to_frames(c.value, c.frames, keep, ndim) for c in ev.costs)
        log_q = log_w.new_zeros(log_w.shape)
        for site in ev.sites.values():
            log_q = log_q + reduce_to_frames(ev.score(site), site.frames, keep, ndim)
        surrogate, bound = E.vimco_surrogate(log_w, log_q, particle[1])
        return bound.sum().detach(), Terms(surrogate=surrogate)
