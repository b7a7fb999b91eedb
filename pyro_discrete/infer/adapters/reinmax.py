r"""The ReinMax site estimators: ReinMax (Liu et al. 2023), ReinMax-Rao (Wang & Bui 2026)
and our ReinMax-CV construction. **Biased.**"""

from __future__ import annotations

import torch

from pyro_discrete import estimators as E
from pyro_discrete.distributions import functional
from pyro_discrete.distributions._params import straight_through
from pyro_discrete.distributions.straight_through import heun_value
from pyro_discrete.infer.adapters.relaxation import GumbelSoftmax
from pyro_discrete.infer.adapters.value_gradient import sample_dim, signal_and_value_gradient

__all__ = ["ReinMax", "ReinMaxCV", "ReinMaxRao"]


class ReinMax(GumbelSoftmax):
    r"""ReinMax (Liu et al. 2023): straight-through with a second-order (Heun) correction.
    **Biased.**

    Forward: the hard sample :math:`b` (exactly 0/1 or one-hot; the reported loss is the
    ELBO at it). Backward: :math:`2J(\pi_1) - \tfrac12 J(\pi_0)` in place of
    straight-through's :math:`J(\pi_0)`, with :math:`\pi_0` the site's probabilities,
    :math:`\pi_1 = \tfrac12(\mathrm{softmax}(\ell/\lambda) + b)` and
    :math:`J(p) = \mathrm{diag}(p) - pp^\top` (a Bernoulli is the two-class case); see
    :mod:`pyro_discrete.estimators.reinmax`. Same cost as straight-through. At
    :math:`\lambda = 1` its expected gradient is exact when the learning signal is
    quadratic in a single site's value (e.g. a Gaussian likelihood with a mean linear in
    :math:`b`); otherwise it is biased, usually less than straight-through. Options:
    ``temperature`` :math:`\lambda` (1.0; the paper prefers :math:`\lambda \ge 1`),
    ``anneal_rate`` (0) and ``min_temperature`` (1.0), as for ``"gumbel"``.

    Reference: L. Liu, C. Dong, X. Liu, B. Yu, J. Gao (2023), *Bridging Discrete and
    Backpropagation: Straight-Through and Beyond*, NeurIPS.
    """

    name = "reinmax"
    defaults = {"temperature": 1.0, "anneal_rate": 0.0, "min_temperature": 1.0}

    def base_value(self, site):
        temperature = self.current_temperature(site.logits)
        if site.one_hot:
            return functional.reinmax_categorical(site.logits, site.hard, temperature)
        return functional.reinmax_bernoulli(site.logits, site.hard, temperature)


class ReinMaxRao(ReinMax):
    r"""ReinMax-Rao (Wang & Bui 2026). **Biased.**

    ``form="gumbel_rao"`` (default): ReinMax's first term :math:`2J(\pi_1)` replaced by
    twice the Gumbel-Rao estimate of the Gumbel-softmax Jacobian at the midpoint's logits
    :math:`\theta_D = \log\tfrac12(\mathrm{softmax}(\ell/\lambda) + b)`,
    :math:`\frac{2}{\tau K}\sum_k J(\mathrm{softmax}((\theta_D + \tilde G_k)/\tau))
    - \frac12 J(\pi_0)`, with ``num_samples`` :math:`K` (10) Gumbel draws conditioned on
    :math:`\arg\max(\theta_D + \tilde G_k) = b` and ``rao_temperature`` :math:`\tau`
    (0.5; measured against ReinMax and straight-through in ``docs/choosing.md``); see
    :func:`~pyro_discrete.estimators.conditional_jacobian_logit_gradient`. This
    is the paper's eq. 17 as two independent public implementations write it (one cites
    the equation; the paper's own text was not reachable from this project).

    ``form="relaxed_endpoint"``: our earlier construction, ReinMax with the hard endpoint
    :math:`b` of its Heun midpoint replaced by relaxed endpoints
    :math:`\mathrm{softmax}(\tilde z_k/\tau)` of conditional draws
    :math:`\tilde z_k \sim p(z \mid b)`:
    :math:`\frac2K\sum_k J(\pi_{1,k}) - \frac12 J(\pi_0)`, with
    ``endpoint_temperature`` :math:`\tau` (0.1; towards 0 it is ReinMax), see
    :mod:`pyro_discrete.estimators.reinmax_rao` (the ``ReinMaxRao*`` distributions are
    this form). Other options as ``"reinmax"``. One model evaluation per step, as ReinMax.
    """

    name = "reinmax_rao"
    FORMS = ("gumbel_rao", "relaxed_endpoint")
    defaults = {
        **ReinMax.defaults,
        "form": "gumbel_rao",
        "rao_temperature": 0.5,
        "endpoint_temperature": 0.1,
        "num_samples": 10,
    }

    def validate_options(self) -> None:
        super().validate_options()
        if self.options["form"] not in self.FORMS:
            raise ValueError(
                f"estimator 'reinmax_rao': form must be one of {', '.join(self.FORMS)}, "
                f"got {self.options['form']!r}"
            )
        for option in ("endpoint_temperature", "rao_temperature"):
            if not self.options[option] > 0:
                raise ValueError(f"estimator 'reinmax_rao': {option} must be positive")
        if int(self.options["num_samples"]) < 1:
            raise ValueError("estimator 'reinmax_rao': num_samples must be >= 1")

    def base_value(self, site):
        num_samples = int(self.options["num_samples"])
        temperature = self.current_temperature(site.logits)
        if self.options["form"] == "relaxed_endpoint":
            relaxation = site.relaxation()
            z = relaxation.conditional(site.hard).rsample((num_samples,)).detach()
            endpoints = relaxation.relax(z, float(self.options["endpoint_temperature"]))
            midpoints = E.heun_midpoints(site.logits, endpoints, temperature, site.one_hot)
            return heun_value(site.logits, site.hard, midpoints, site.one_hot)
        rao_temperature = float(self.options["rao_temperature"])
        theta = E.shifted_logits(site.logits.detach(), site.hard, temperature, site.one_hot)
        relaxation = site.relaxation(theta)
        z = relaxation.conditional(site.hard).rsample((num_samples,)).detach()
        relaxed = relaxation.relax(z, rao_temperature).detach()
        # hard forward; backward (2/tau) mean_k J(s_k) - J(pi_0)/2 (J symmetric: the
        # gradient of J(s) l in l is J(s), s held constant)
        if site.one_hot:
            linear = relaxed * site.logits - relaxed * (relaxed * site.logits).sum(-1, keepdim=True)
            pi_0 = torch.softmax(site.logits, -1)
        else:
            linear = relaxed * (1 - relaxed) * site.logits
            pi_0 = torch.sigmoid(site.logits)
        return straight_through(site.hard, 2 * linear.mean(0) / rao_temperature - 0.5 * pi_0)


class ReinMaxCV(ReinMax):
    r"""ReinMax-CV, **our construction** (the paper, Wang & Bui 2026, was readable only as
    an abstract). **Biased** as ReinMax: the same expectation, a lower variance.

    Each of the :math:`K` = ``num_particles`` (>= 2) samples :math:`D_k` gets ReinMax's
    estimate with the control variate :math:`(\bar M - M(D_k))c_k`, where :math:`M(D)` is
    ReinMax's matrix, :math:`\bar M = \mathbb E_D[M(D)]` its closed-form mean and
    :math:`c_k` the mean of the other particles' value gradients
    :math:`\nabla f(D_j)` (independent of :math:`D_k`, so the correction has mean zero);
    see :mod:`pyro_discrete.estimators.reinmax_cv`. The value gradients come from one extra
    backward pass through the base pass's costs, no extra model evaluation. Options as
    ``"reinmax"``.
    """

    name = "reinmax_cv"
    multi_sample = True

    def site_terms(self, ev, site):
        terms = super().site_terms(ev, site)
        _, value_gradient = signal_and_value_gradient(ev, site)
        baseline = E.leave_one_out_mean(value_gradient, sample_dim(ev, site))
        temperature = self.current_temperature(site.logits)
        correction = E.reinmax_cv_correction(
            site.logits.detach(), site.hard, baseline, temperature, site.one_hot
        )
        terms.surrogate = terms.surrogate + (correction.detach() * site.logits).sum()
        return terms
