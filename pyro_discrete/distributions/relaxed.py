r"""The continuous variables underlying a Bernoulli and a categorical.

A Bernoulli with logit :math:`\ell` is the threshold :math:`b = H(z) = 1[z > 0]` of a
logistic variable :math:`z = \ell + \log u - \log(1 - u)`, :math:`u \sim U(0, 1)`; a
categorical with probabilities :math:`\theta = \mathrm{softmax}(\ell)` is the argmax of
:math:`z_k = \log\theta_k + g_k` with independent standard Gumbel :math:`g_k` (the Gumbel-max
trick). These distributions give ``z`` itself, reparameterised, with its exact density, plus
the two maps estimators need: ``threshold`` (the discrete value) and ``relax`` (the
Concrete / Gumbel-softmax relaxation at a temperature :math:`\lambda`).

References:

- C. Maddison, A. Mnih, Y. W. Teh (2017), *The Concrete Distribution: A Continuous
  Relaxation of Discrete Random Variables*.
- E. Jang, S. Gu, B. Poole (2017), *Categorical Reparameterization with Gumbel-Softmax*.
- G. Tucker, A. Mnih, C. Maddison, D. Lawson, J. Sohl-Dickstein (2017), *REBAR:
  Low-variance, unbiased gradient estimates for discrete latent variable models*.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import constraints

from . import functional as fn
from ._densities import gumbel_log_density, logistic_log_density
from ._params import (
    BernoulliParams,
    CategoricalParams,
    SampleShape,
    check_temperature,
    straight_through,
)
from .conditional import ConditionalGumbelCategorical, ConditionalLogisticBernoulli

__all__ = ["LogisticBernoulli", "GumbelCategorical"]

_EULER_GAMMA = 0.5772156649015329


class LogisticBernoulli(BernoulliParams):
    r"""The logistic variable :math:`z = \ell + \log u - \log(1 - u)`, :math:`u \sim U(0,1)`,
    whose threshold :math:`H(z) = 1[z > 0]` is :math:`\mathrm{Bernoulli}(\sigma(\ell))`.

    :math:`z \sim \mathrm{Logistic}(\ell, 1)` with density

    .. math:: p(z) = \frac{e^{-(z-\ell)}}{(1 + e^{-(z-\ell)})^2},
              \qquad P(H(z) = 1) = \sigma(\ell) = \theta.

    ``rsample`` is reparameterised in ``logits`` (or ``probs``); :meth:`relax` gives the
    binary Concrete value :math:`\sigma(z/\lambda)` and :meth:`conditional` the distribution
    of :math:`z` given :math:`H(z) = b` (REBAR, RELAX).

    Example::

        >>> d = LogisticBernoulli(logits=torch.tensor([-1.0, 0.0, 2.0]))
        >>> z = d.rsample()
        >>> d.threshold(z).shape, bool(((d.relax(z, 0.5) > 0.5) == (z > 0)).all())
        (torch.Size([3]), True)
        >>> d.log_prob(torch.tensor(0.0))  # logistic density at z = 0
        tensor([-1.6265, -1.3863, -2.2539])

    :param logits: log-odds :math:`\ell` of :math:`H(z) = 1` (exactly one of ``logits``,
        ``probs``).
    :param probs: :math:`\theta = P(H(z) = 1)`.
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """

    support = constraints.real
    has_rsample = True

    def __init__(
        self,
        probs: Tensor | float | None = None,
        logits: Tensor | float | None = None,
        validate_args: bool | None = None,
    ) -> None:
        param = self._init_param(logits, probs)
        super().__init__(param.shape, validate_args=validate_args)

    def expand(
        self, batch_shape: SampleShape, _instance: LogisticBernoulli | None = None
    ) -> LogisticBernoulli:
        new = self._get_checked_instance(LogisticBernoulli, _instance)
        batch_shape = torch.Size(batch_shape)
        self._expand_param_into(new, batch_shape)
        super(LogisticBernoulli, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> Tensor:
        return self.logits

    @property
    def mode(self) -> Tensor:
        return self.logits

    @property
    def variance(self) -> Tensor:
        return torch.full_like(self._param, math.pi**2 / 3)

    def entropy(self) -> Tensor:
        return torch.full_like(self._param, 2.0)

    def rsample(self, sample_shape: SampleShape = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        logits = self.logits.expand(shape)
        return fn.logistic_sample(logits, fn.uniform_like(logits))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return logistic_log_density(value - self.logits)

    def cdf(self, value: Tensor) -> Tensor:
        return torch.sigmoid(value - self.logits)

    def icdf(self, value: Tensor) -> Tensor:
        return self.logits + torch.logit(value)

    def threshold(self, z: Tensor) -> Tensor:
        """The Bernoulli value :math:`b = H(z) = 1[z > 0]` (no gradient)."""
        return fn.heaviside(z)

    def relax(self, z: Tensor, temperature: Tensor | float) -> Tensor:
        r"""The binary Concrete relaxation :math:`\sigma(z / \lambda)`, :math:`\lambda > 0`."""
        check_temperature(temperature, self._validate_args)
        return fn.relax_bernoulli(z, temperature)

    def conditional(self, outcome: Tensor) -> ConditionalLogisticBernoulli:
        """The distribution of :math:`z` given :math:`H(z) =` ``outcome``."""
        return ConditionalLogisticBernoulli(
            logits=self.logits, outcome=outcome, validate_args=self._validate_args
        )

    def reparameterize(self, noise: Tensor) -> Tensor:
        r""":math:`z` from given uniform ``noise`` :math:`u` (``rsample`` draws its own):
        :math:`z = \ell + \log u - \log(1 - u)`. Estimators that evaluate the model
        several times at values of one draw keep :math:`u`."""
        return fn.logistic_sample(self.logits.expand(noise.shape), noise)

    def straight_through(self, z: Tensor, temperature: Tensor | float) -> Tensor:
        r"""The straight-through value: exactly :math:`H(z)` in the forward pass, the
        gradient of :math:`\sigma(z/\lambda)` in the backward pass."""
        return straight_through(self.threshold(z).detach(), self.relax(z, temperature))

    def rao_blackwellized_relax(
        self, outcome: Tensor, temperature: Tensor | float, num_samples: int
    ) -> Tensor:
        r"""Gumbel-Rao's relaxed value (Paulus et al. 2021): the mean of
        :math:`\sigma(\tilde z_k/\lambda)` over ``num_samples`` draws
        :math:`\tilde z_k \sim p(z \mid H(z) = b)`, the noise :math:`\tilde z_k - \ell`
        held fixed in the backward pass (as in straight-through), so that its gradient
        estimates :math:`E[\hat g_{ST} \mid b]`."""
        return _rao_blackwellized_relax(
            self, self.logits, outcome, temperature, num_samples, fn.logistic_conditional_sample
        )


class GumbelCategorical(CategoricalParams):
    r"""The Gumbel-max variable :math:`z_k = \log\theta_k + g_k`, :math:`g_k` i.i.d. standard
    Gumbel, whose argmax is :math:`\mathrm{Categorical}(\theta)`.

    The event is the whole vector :math:`z \in \mathbb{R}^K` (``event_shape == (K,)``) with
    density

    .. math:: p(z) = \prod_k \exp\!\big(-(z_k - \log\theta_k) - e^{-(z_k - \log\theta_k)}\big),
              \qquad P(\arg\max_k z_k = j) = \theta_j,

    where :math:`\log\theta = \mathrm{log\_softmax}(\ell)`. ``rsample`` is reparameterised;
    :meth:`relax` gives the Gumbel-softmax value :math:`\mathrm{softmax}(z/\lambda)` and
    :meth:`conditional` the distribution of :math:`z` given its argmax.

    Example::

        >>> d = GumbelCategorical(logits=torch.tensor([0.0, 1.0, 2.0]))
        >>> z = d.rsample((4,))
        >>> z.shape, d.threshold(z).sum(-1)
        (torch.Size([4, 3]), tensor([1., 1., 1., 1.]))
        >>> d.relax(z, 0.1).sum(-1).allclose(torch.ones(4))
        True

    :param logits: unnormalised log-probabilities, last dimension the categories (exactly
        one of ``logits``, ``probs``); stored normalised.
    :param probs: probabilities, normalised along the last dimension.
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """

    support = constraints.independent(constraints.real, 1)
    has_rsample = True

    def __init__(
        self,
        probs: Tensor | None = None,
        logits: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        param = self._init_param(logits, probs)
        super().__init__(param.shape[:-1], param.shape[-1:], validate_args=validate_args)

    def expand(
        self, batch_shape: SampleShape, _instance: GumbelCategorical | None = None
    ) -> GumbelCategorical:
        new = self._get_checked_instance(GumbelCategorical, _instance)
        batch_shape = torch.Size(batch_shape)
        self._expand_param_into(new, batch_shape)
        super(GumbelCategorical, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> Tensor:
        return torch.log_softmax(self.logits, -1) + _EULER_GAMMA

    @property
    def mode(self) -> Tensor:
        return torch.log_softmax(self.logits, -1)

    @property
    def variance(self) -> Tensor:
        return torch.full_like(self._param, math.pi**2 / 6)

    def rsample(self, sample_shape: SampleShape = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        logits = self.logits.expand(shape)
        return fn.gumbel_sample(logits, fn.uniform_like(logits))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return gumbel_log_density(value - torch.log_softmax(self.logits, -1)).sum(-1)

    def threshold(self, z: Tensor) -> Tensor:
        """The one-hot argmax of ``z`` (no gradient)."""
        return fn.onehot_argmax(z)

    def relax(self, z: Tensor, temperature: Tensor | float) -> Tensor:
        r"""The Gumbel-softmax relaxation :math:`\mathrm{softmax}(z / \lambda)`,
        :math:`\lambda > 0` (a tensor ``temperature`` broadcasts against ``z``'s batch
        dimensions, not its last dimension)."""
        check_temperature(temperature, self._validate_args)
        if isinstance(temperature, Tensor):
            temperature = temperature.unsqueeze(-1)
        return fn.relax_categorical(z, temperature)

    def conditional(self, outcome: Tensor) -> ConditionalGumbelCategorical:
        """The distribution of :math:`z` given :math:`\\mathrm{onehot}(\\arg\\max z) =`
        ``outcome``."""
        return ConditionalGumbelCategorical(
            logits=self.logits, outcome=outcome, validate_args=self._validate_args
        )

    def reparameterize(self, noise: Tensor) -> Tensor:
        r""":math:`z` from given uniform ``noise`` :math:`u` (``rsample`` draws its own):
        :math:`z_k = \log\theta_k - \log(-\log u_k)`."""
        return fn.gumbel_sample(self.logits.expand(noise.shape), noise)

    def straight_through(self, z: Tensor, temperature: Tensor | float) -> Tensor:
        r"""The straight-through value: exactly :math:`\mathrm{onehot}(\arg\max z)` in the
        forward pass, the gradient of :math:`\mathrm{softmax}(z/\lambda)` in the backward
        pass."""
        return straight_through(self.threshold(z).detach(), self.relax(z, temperature))

    def rao_blackwellized_relax(
        self, outcome: Tensor, temperature: Tensor | float, num_samples: int
    ) -> Tensor:
        r"""Gumbel-Rao's relaxed value (Paulus et al. 2021): the mean of
        :math:`\mathrm{softmax}(\tilde z_k/\lambda)` over ``num_samples`` draws
        :math:`\tilde z_k \sim p(z \mid \arg\max z = b)`, the Gumbel noise
        :math:`\tilde z_k - \log\theta` held fixed in the backward pass."""
        log_theta = torch.log_softmax(self.logits, -1)
        return _rao_blackwellized_relax(
            self, log_theta, outcome, temperature, num_samples, fn.gumbel_conditional_sample
        )


def _rao_blackwellized_relax(relaxation, location, outcome, temperature, num_samples, sample):
    shape = torch.Size((num_samples,)) + outcome.shape
    location = location.expand(shape)
    noise = fn.uniform_like(location)
    with torch.no_grad():
        z = sample(location, outcome.expand(shape), noise)
    # Differentiating through the conditional sampler instead (REBAR's reparameterisation)
    # has another expectation; Paulus et al. move only the location.
    z = location + (z - location.detach())
    return relaxation.relax(z, temperature).mean(0)
