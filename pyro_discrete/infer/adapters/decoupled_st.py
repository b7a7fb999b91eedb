r"""The decoupled straight-through site estimator (Shah et al. 2024). **Biased.**"""

from __future__ import annotations

from pyro_discrete.distributions._params import straight_through
from pyro_discrete.infer.adapters.relaxation import GumbelSoftmax, StraightThrough

__all__ = ["DecoupledStraightThrough"]


class DecoupledStraightThrough(StraightThrough):
    r"""Decoupled straight-through (Shah, Yan, Mozer, Liu 2024). **Biased.**

    Straight-through Gumbel-softmax with two temperatures: the hard sample is drawn from
    the tempered law :math:`\mathrm{softmax}(\ell/\tau_f)` (``forward_temperature``
    :math:`\tau_f`, 1.0: exploration) through :math:`z = \ell/\tau_f + g`, and the backward
    pass differentiates :math:`\mathrm{softmax}(z/\tau_b)` (``temperature`` :math:`\tau_b`,
    1.0: how the gradient spreads over the categories; same schedule options as ``"st"``).
    See :mod:`pyro_discrete.estimators.decoupled_st` (the formula is our reading of the
    paper's abstract). At :math:`\tau_f = 1` it is ``"st"`` exactly. At :math:`\tau_f \ne 1`
    the site's value follows the tempered law, not the guide's: the reported loss is then
    :math:`-\mathbb E_{q_{\tau_f}}[\log p - \log q]` (the guide still scores the value with
    its own :math:`q`), not the ELBO, and other sites' relaxed passes (``rebar``,
    ``relax`` on an earlier site) relax this site at its untempered law.
    """

    name = "decoupled_st"
    defaults = {**GumbelSoftmax.defaults, "forward_temperature": 1.5}

    def validate_options(self) -> None:
        super().validate_options()
        if not self.options["forward_temperature"] > 0:
            raise ValueError("estimator 'decoupled_st': forward_temperature must be positive")

    def base_value(self, site):
        forward_temperature = float(self.options["forward_temperature"])
        if forward_temperature == 1.0:
            return super().base_value(site)
        relaxation = site.relaxation(site.logits / forward_temperature)
        # the site's record is the tempered draw its value is made of
        site.z = relaxation.reparameterize(site.noise)
        site.hard = relaxation.threshold(site.z).detach()
        soft = relaxation.relax(site.z, self.current_temperature(site.logits))
        return straight_through(site.hard, soft)
