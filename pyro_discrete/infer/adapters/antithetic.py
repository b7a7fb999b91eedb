"""Antithetic adapters for Bernoulli sites: ARM and DisARM."""

from __future__ import annotations

from pyro_discrete import estimators as E
from pyro_discrete.infer.adapters.base import SiteEstimator, Terms
from pyro_discrete.infer.evaluation import cost_terms


class ARM(SiteEstimator):
    r"""ARM (Yin & Zhou 2019) for Bernoulli sites: two evaluations with antithetic noise.

    For a site after others in the guide, the antithetic branch keeps the earlier sites'
    values and draws the later ones afresh, so every layer of a deep belief net is
    estimated without bias (one extra model evaluation per site).
    """

    name = "arm"
    requires = "bernoulli"
    needs_noise = True

    def _antithetic(self, ev, site):
        anti = site.relaxation().reparameterize(E.antithetic_uniform(site.noise))
        b_anti = site.relaxation().threshold(anti).detach()
        model_trace, guide_trace = ev.run(
            ev.prefix_choice(site, at_site=lambda msg: b_anti, after=lambda msg: None)
        )
        f_anti = ev.signal(site, cost_terms(model_trace, guide_trace, relaxed=True))
        return b_anti, site.to_event_shape(ev.signal(site)), site.to_event_shape(f_anti)

    def logit_gradient(self, ev, site):
        _, f_b, f_anti = self._antithetic(ev, site)
        return E.arm_logit_gradient(site.noise, f_b, f_anti)

    def site_terms(self, ev, site):
        return Terms(surrogate=(self.logit_gradient(ev, site) * site.logits).sum())


class DisARM(ARM):
    r"""DisARM (Dong, Mnih & Tucker 2020): ARM with the noise integrated out; same cost."""

    name = "disarm"

    def logit_gradient(self, ev, site):
        b_anti, f_b, f_anti = self._antithetic(ev, site)
        return E.disarm_logit_gradient(site.logits, site.hard, b_anti, f_b, f_anti)
