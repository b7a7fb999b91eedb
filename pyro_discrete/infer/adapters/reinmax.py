r"""The ReinMax site estimator (Liu et al. 2023). **Biased.**"""

from __future__ import annotations

from pyro_discrete.distributions import functional
from pyro_discrete.infer.adapters.relaxation import GumbelSoftmax

__all__ = ["ReinMax"]


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
