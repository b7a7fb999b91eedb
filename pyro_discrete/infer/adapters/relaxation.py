"""Biased pathwise adapters: Gumbel-softmax, straight-through, Gumbel-Rao.

The site's value in the base pass carries the gradient; its relaxed, straight-through and
Rao-Blackwellised values come from the site's relaxation in
:mod:`pyro_discrete.distributions` (one implementation, shared with
:class:`~pyro_discrete.distributions.StraightThroughBernoulli` and its kin).
"""

from __future__ import annotations

import math

import pyro
import torch
from torch import Tensor

from pyro_discrete.distributions._params import straight_through
from pyro_discrete.infer import control_variates as cv
from pyro_discrete.infer.adapters.base import SiteEstimator, Terms


class GumbelSoftmax(SiteEstimator):
    r"""Gumbel-softmax / Concrete relaxation (Jang et al. 2017; Maddison et al. 2017). **Biased.**

    The site takes the relaxed value :math:`\sigma_\lambda(z)` (softmax for one-hot) and the
    model and guide are scored at it with the continuous extensions of their log-masses;
    gradients flow by reparameterisation. The loss it reports is minus the ELBO at the hard
    samples :math:`b = H(z)` of the same noise (one extra evaluation of the model and guide,
    without gradients); minus the relaxed objective that it differentiates is
    ``DiscreteELBO.last_relaxed_loss``.

    Temperature schedule: :math:`\lambda_t = \max(\lambda_{\min},
    \lambda_0 e^{-r t})` with ``temperature`` :math:`\lambda_0` (1.0), ``anneal_rate``
    :math:`r` (0) and ``min_temperature`` (0.5); :math:`t` counts steps and is a running
    statistic (checkpointed, advanced in place).
    """

    name = "gumbel"
    requires = "relaxable"
    pathwise = True
    needs_noise = True
    defaults = {"temperature": 1.0, "anneal_rate": 0.0, "min_temperature": 0.5}
    running_state = {"step": 0.0}
    #: the base pass gives the site a relaxed (not hard) value, so the reported loss needs a
    #: pass at the hard samples; subclasses (straight-through and kin) give the hard value
    #: forward unless they set this themselves
    relaxed_forward = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "relaxed_forward" not in cls.__dict__:
            cls.relaxed_forward = False

    def validate_options(self) -> None:
        super().validate_options()
        if self.options["anneal_rate"] < 0:
            raise ValueError(
                f"estimator '{self.name}': anneal_rate must be >= 0 (0 keeps the temperature "
                f"fixed), got {self.options['anneal_rate']!r}"
            )

    def _counter_name(self) -> str:
        return self.state_name("schedule", "step")

    @property
    def step(self) -> int:
        """Steps taken so far (reads the counter: a host sync)."""
        store = pyro.get_param_store()
        name = self._counter_name()
        return int(store[name].item()) if name in store else 0

    def current_temperature(self, like: Tensor | None = None) -> Tensor | float:
        r""":math:`\lambda_t`; a tensor computed on ``like``'s device when annealing."""
        o = self.options
        if not o["anneal_rate"]:
            return o["temperature"]
        if like is None:
            return max(
                o["min_temperature"], o["temperature"] * math.exp(-o["anneal_rate"] * self.step)
            )
        step = cv.running_statistic(self._counter_name(), like)
        return (o["temperature"] * torch.exp(-o["anneal_rate"] * step)).clamp(
            min=o["min_temperature"]
        )

    def end_step(self) -> None:
        store = pyro.get_param_store()
        name = self._counter_name()
        if self.options["anneal_rate"] and name in store:
            with torch.no_grad():
                store[name].add_(1.0)

    def base_value(self, site):
        return site.relaxation().relax(site.z, self.current_temperature(site.logits))

    def site_terms(self, ev, site):
        ev.check_relaxed_value_reaches_costs(site, site.value, ev.costs)
        return Terms()


class StraightThrough(GumbelSoftmax):
    r"""Straight-through Gumbel (Bengio et al. 2013; Jang et al. 2017). **Biased.**

    Forward: the hard sample :math:`b` (exactly 0/1 or one-hot); backward: the gradient of
    :math:`\sigma_\lambda(z)`. The reported loss is the ELBO at the hard sample.
    """

    name = "st"

    def base_value(self, site):
        return site.relaxation().straight_through(site.z, self.current_temperature(site.logits))


class GumbelRao(GumbelSoftmax):
    r"""Gumbel-Rao (Paulus et al. 2021). **Biased** (as straight-through), lower variance.

    Forward: the hard sample :math:`b`; backward: the straight-through gradient averaged
    over ``num_samples`` (10) conditional draws :math:`\tilde z \sim p(z \mid b)`.
    """

    name = "gumbel_rao"
    defaults = {**GumbelSoftmax.defaults, "num_samples": 10}

    def validate_options(self):
        super().validate_options()
        if int(self.options["num_samples"]) < 1:
            raise ValueError("estimator 'gumbel_rao': num_samples must be >= 1")

    def base_value(self, site):
        soft = site.relaxation().rao_blackwellized_relax(
            site.hard, self.current_temperature(site.logits), int(self.options["num_samples"])
        )
        return straight_through(site.hard, soft)
