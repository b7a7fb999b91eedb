r"""The ReinMax site estimators: ReinMax (Liu et al. 2023) and our ReinMax-Rao and ReinMax-CV
constructions. **Biased.**"""

from __future__ import annotations

from pyro_discrete import estimators as E
from pyro_discrete.distributions import functional
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
    r"""ReinMax-Rao, **our construction** (the paper, Wang & Bui 2026, was readable only as
    an abstract). **Biased.**

    ReinMax with the hard endpoint :math:`b` of its Heun midpoint replaced by relaxed
    endpoints :math:`\mathrm{softmax}(\tilde z_k/\tau)` of ``num_samples`` :math:`K` (10)
    conditional draws :math:`\tilde z_k \sim p(z \mid b)`, the midpoint Jacobians averaged
    (the Gumbel-Rao device): :math:`\frac2K\sum_k J(\pi_{1,k}) - \frac12 J(\pi_0)`, see
    :mod:`pyro_discrete.estimators.reinmax_rao`. ``endpoint_temperature`` :math:`\tau`
    (0.1): towards 0 it is ReinMax, larger values move the mean towards straight-through's.
    Measured (``docs/choosing.md``): at 0.1, 20% lower guide-gradient variance than ReinMax
    on the one-hot mixture of experts, 23% higher on Bernoulli bits, with a larger bias
    than ReinMax's and a smaller one than straight-through's.
    Other options as ``"reinmax"``. One model evaluation per step, as ReinMax.
    """

    name = "reinmax_rao"
    defaults = {**ReinMax.defaults, "endpoint_temperature": 0.1, "num_samples": 10}

    def validate_options(self) -> None:
        super().validate_options()
        if not self.options["endpoint_temperature"] > 0:
            raise ValueError("estimator 'reinmax_rao': endpoint_temperature must be positive")
        if int(self.options["num_samples"]) < 1:
            raise ValueError("estimator 'reinmax_rao': num_samples must be >= 1")

    def base_value(self, site):
        relaxation = site.relaxation()
        num_samples = int(self.options["num_samples"])
        z = relaxation.conditional(site.hard).rsample((num_samples,)).detach()
        endpoints = relaxation.relax(z, float(self.options["endpoint_temperature"]))
        temperature = self.current_temperature(site.logits)
        midpoints = E.heun_midpoints(site.logits, endpoints, temperature, site.one_hot)
        return heun_value(site.logits, site.hard, midpoints, site.one_hot)


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
