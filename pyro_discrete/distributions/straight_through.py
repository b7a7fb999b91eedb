r"""Straight-through and Gumbel-Rao distributions: hard samples, relaxed gradients.

``rsample`` returns the discrete value (exactly 0/1, or exactly one-hot) in the forward pass
and, in the backward pass, the gradient of a relaxation:

- straight-through (Bengio et al. 2013; Jang et al. 2017): the relaxation of the very noise
  that produced the sample, :math:`\sigma(z/\lambda)` or :math:`\mathrm{softmax}(z/\lambda)`;
- ReinMax (Liu et al. 2023): the second-order (Heun) correction of straight-through,
  :math:`2J(\pi_1) - \frac12 J(\pi_0)` with :math:`\pi_0` the probabilities and
  :math:`\pi_1 = \frac12(\mathrm{softmax}(\ell/\lambda) + b)`; **biased**, exact in
  expectation for an :math:`f` quadratic in :math:`b` at :math:`\lambda = 1`;
- Gumbel-Rao (Paulus et al. 2021): the average over :math:`K` conditional draws
  :math:`\tilde z_k \sim p(z \mid b)` of the same relaxation, with their noise held fixed
  as in straight-through, i.e. the straight-through gradient Rao-Blackwellised over the noise
  given :math:`b` (same mean, lower variance).

The returned value is ``b + (s - s.detach())`` with ``s`` the (averaged) relaxed value.
``log_prob(value)`` is the discrete log-mass of ``value`` alone, through the continuous
extensions ``functional.bernoulli_log_mass`` / ``functional.categorical_log_mass``: it does
not read state stashed on the sample tensor (unlike Pyro's
``RelaxedOneHotCategoricalStraightThrough``, whose ``log_prob(sample.clone())`` silently
differs from ``log_prob(sample)``), and it is differentiable in ``value``.

References:

- Y. Bengio, N. Léonard, A. Courville (2013), *Estimating or Propagating Gradients Through
  Stochastic Neurons for Conditional Computation*.
- E. Jang, S. Gu, B. Poole (2017), *Categorical Reparameterization with Gumbel-Softmax*.
- M. Paulus, C. Maddison, A. Krause (2021), *Rao-Blackwellizing the Straight-Through
  Gumbel-Softmax Gradient Estimator*.
- L. Liu, C. Dong, X. Liu, B. Yu, J. Gao (2023), *Bridging Discrete and Backpropagation:
  Straight-Through and Beyond*.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import constraints

from . import functional as fn
from ._params import (
    BernoulliParams,
    CategoricalParams,
    SampleShape,
    as_float_tensor,
    broadcast_to_batch,
    check_num_samples,
    check_temperature,
    straight_through,
    validation_enabled,
)
from .relaxed import GumbelCategorical, LogisticBernoulli

__all__ = [
    "StraightThroughBernoulli",
    "StraightThroughOneHotCategorical",
    "GumbelRaoBernoulli",
    "GumbelRaoOneHotCategorical",
    "ReinMaxBernoulli",
    "ReinMaxOneHotCategorical",
]


class StraightThroughBernoulli(BernoulliParams):
    r"""Bernoulli samples with the straight-through binary-Concrete gradient.

    With :math:`z = \ell + \log u - \log(1 - u)`, :math:`u \sim U(0,1)`:

    .. math:: \mathrm{rsample} = H(z) \text{ (forward)}, \qquad
              \frac{\partial\,\mathrm{rsample}}{\partial \ell}
              = \frac{\partial \sigma(z/\lambda)}{\partial \ell} \text{ (backward)}.

    ``log_prob(v)`` is :math:`v\log\theta + (1-v)\log(1-\theta)`, the Bernoulli log-mass.

    Example::

        >>> logits = torch.tensor([0.0, 3.0], requires_grad=True)
        >>> d = StraightThroughBernoulli(0.5, logits=logits)
        >>> b = d.rsample()
        >>> bool(((b == 0) | (b == 1)).all()), b.requires_grad
        (True, True)
        >>> d.log_prob(torch.tensor([1.0, 1.0]))
        tensor([-0.6931, -0.0486], grad_fn=<AddBackward0>)

    :param temperature: :math:`\lambda > 0` of the relaxation (float or tensor broadcasting
        against the batch shape).
    :param logits: log-odds (exactly one of ``logits``, ``probs``).
    :param probs: :math:`\theta = P(b = 1)`.
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """

    arg_constraints = {**BernoulliParams.arg_constraints, "temperature": constraints.positive}
    support = constraints.boolean
    has_rsample = True

    def __init__(
        self,
        temperature: Tensor | float,
        probs: Tensor | float | None = None,
        logits: Tensor | float | None = None,
        validate_args: bool | None = None,
    ) -> None:
        param = self._init_param(logits, probs)
        check_temperature(temperature, validation_enabled(validate_args))
        temperature = as_float_tensor(temperature, like=param)
        batch_shape = broadcast_to_batch("temperature", temperature, param.shape)
        self._broadcast_param(batch_shape)
        self.temperature = temperature.expand(batch_shape)
        super().__init__(batch_shape, validate_args=validate_args)

    def expand(
        self, batch_shape: SampleShape, _instance: StraightThroughBernoulli | None = None
    ) -> StraightThroughBernoulli:
        new = self._get_checked_instance(StraightThroughBernoulli, _instance)
        batch_shape = torch.Size(batch_shape)
        self._expand_param_into(new, batch_shape)
        new.temperature = self.temperature.expand(batch_shape)
        super(StraightThroughBernoulli, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def variance(self) -> Tensor:
        return self.probs * (1 - self.probs)

    def entropy(self) -> Tensor:
        return F.binary_cross_entropy_with_logits(self.logits, self.probs, reduction="none")

    def _noise(self, sample_shape: SampleShape) -> Tensor:
        shape = self._extended_shape(sample_shape)
        logits = self.logits.expand(shape)
        return fn.logistic_sample(logits, fn.uniform_like(logits))

    def sample(self, sample_shape: SampleShape = ()) -> Tensor:
        with torch.no_grad():
            return fn.heaviside(self._noise(sample_shape))

    def rsample(self, sample_shape: SampleShape = ()) -> Tensor:
        z = self._noise(sample_shape)
        return straight_through(fn.heaviside(z), fn.relax_bernoulli(z, self.temperature))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        if value.dtype == torch.bool:
            value = value.to(self._param.dtype)
        return fn.bernoulli_log_mass(self.logits, value)


class GumbelRaoBernoulli(StraightThroughBernoulli):
    r"""Bernoulli samples with the Gumbel-Rao (Rao-Blackwellised straight-through) gradient.

    Forward: :math:`b = H(z)` as in :class:`StraightThroughBernoulli`. Backward: the gradient
    of :math:`\frac1K\sum_{k=1}^K \sigma(\tilde z_k/\lambda)` with
    :math:`\tilde z_k \sim p(z \mid H(z) = b)` drawn independently by
    ``functional.logistic_conditional_sample`` and, as in straight-through, the noise
    :math:`\tilde z_k - \ell` held fixed (:math:`\partial\tilde z_k/\partial\ell = 1`):

    .. math:: \hat g_{GR} = \frac1K \sum_k \sigma'(\tilde z_k/\lambda)/\lambda
              \;\approx\; E[\hat g_{ST} \mid b].

    :math:`K = 1` has the distribution of the straight-through gradient; larger :math:`K`
    lowers its variance with the same expectation.

    Example::

        >>> logits = torch.tensor([0.0, 3.0], requires_grad=True)
        >>> b = GumbelRaoBernoulli(0.5, logits=logits, num_samples=100).rsample((5,))
        >>> b.shape, bool(((b == 0) | (b == 1)).all())
        (torch.Size([5, 2]), True)

    :param temperature: :math:`\lambda > 0`.
    :param logits: log-odds (exactly one of ``logits``, ``probs``).
    :param probs: :math:`\theta = P(b = 1)`.
    :param num_samples: :math:`K \ge 1`, conditional draws per sample.
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """

    def __init__(
        self,
        temperature: Tensor | float,
        probs: Tensor | float | None = None,
        logits: Tensor | float | None = None,
        num_samples: int = 10,
        validate_args: bool | None = None,
    ) -> None:
        self.num_samples = check_num_samples(num_samples)
        super().__init__(temperature, logits=logits, probs=probs, validate_args=validate_args)

    def expand(
        self, batch_shape: SampleShape, _instance: GumbelRaoBernoulli | None = None
    ) -> GumbelRaoBernoulli:
        new = self._get_checked_instance(GumbelRaoBernoulli, _instance)
        new = super().expand(batch_shape, _instance=new)
        new.num_samples = self.num_samples
        return new

    def rsample(self, sample_shape: SampleShape = ()) -> Tensor:
        with torch.no_grad():
            hard = fn.heaviside(self._noise(sample_shape))
        relaxation = LogisticBernoulli(logits=self.logits, validate_args=False)
        soft = relaxation.rao_blackwellized_relax(hard, self.temperature, self.num_samples)
        return straight_through(hard, soft)


class StraightThroughOneHotCategorical(CategoricalParams):
    r"""One-hot categorical samples with the straight-through Gumbel-softmax gradient.

    With :math:`z_k = \log\theta_k - \log(-\log u_k)`:

    .. math:: \mathrm{rsample} = \mathrm{onehot}(\arg\max z) \text{ (forward)}, \qquad
              \frac{\partial\,\mathrm{rsample}}{\partial \ell}
              = \frac{\partial\,\mathrm{softmax}(z/\lambda)}{\partial \ell}
              \text{ (backward)}.

    ``log_prob(v)`` is :math:`\sum_k v_k \log\theta_k`, the one-hot categorical log-mass.

    Example::

        >>> logits = torch.tensor([1.0, 0.0, -1.0], requires_grad=True)
        >>> d = StraightThroughOneHotCategorical(0.5, logits=logits)
        >>> b = d.rsample((2,))
        >>> b.sum(-1), b.requires_grad
        (tensor([1., 1.], grad_fn=<SumBackward1>), True)
        >>> d.log_prob(torch.tensor([0.0, 1.0, 0.0]))
        tensor(-1.4076, grad_fn=<SumBackward1>)

    :param temperature: :math:`\lambda > 0` (float or tensor broadcasting against the batch
        shape).
    :param logits: unnormalised log-probabilities (exactly one of ``logits``, ``probs``).
    :param probs: probabilities.
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """

    arg_constraints = {**CategoricalParams.arg_constraints, "temperature": constraints.positive}
    support = constraints.one_hot
    has_rsample = True

    def __init__(
        self,
        temperature: Tensor | float,
        probs: Tensor | None = None,
        logits: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        param = self._init_param(logits, probs)
        check_temperature(temperature, validation_enabled(validate_args))
        temperature = as_float_tensor(temperature, like=param)
        batch_shape = broadcast_to_batch("temperature", temperature, param.shape[:-1])
        self._broadcast_param(batch_shape)
        self.temperature = temperature.expand(batch_shape)
        super().__init__(batch_shape, param.shape[-1:], validate_args=validate_args)

    def expand(
        self, batch_shape: SampleShape, _instance: StraightThroughOneHotCategorical | None = None
    ) -> StraightThroughOneHotCategorical:
        new = self._get_checked_instance(StraightThroughOneHotCategorical, _instance)
        batch_shape = torch.Size(batch_shape)
        self._expand_param_into(new, batch_shape)
        new.temperature = self.temperature.expand(batch_shape)
        super(StraightThroughOneHotCategorical, new).__init__(
            batch_shape, self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def variance(self) -> Tensor:
        return self.probs * (1 - self.probs)

    def entropy(self) -> Tensor:
        return -(self.probs * torch.log_softmax(self.logits, -1)).sum(-1)

    def _noise(self, sample_shape: SampleShape) -> Tensor:
        shape = self._extended_shape(sample_shape)
        logits = self.logits.expand(shape)
        return fn.gumbel_sample(logits, fn.uniform_like(logits))

    def _relax(self, z: Tensor) -> Tensor:
        # temperature has the batch shape; the softmax runs over the event dimension.
        return fn.relax_categorical(z, self.temperature.unsqueeze(-1))

    def sample(self, sample_shape: SampleShape = ()) -> Tensor:
        with torch.no_grad():
            return fn.onehot_argmax(self._noise(sample_shape))

    def rsample(self, sample_shape: SampleShape = ()) -> Tensor:
        z = self._noise(sample_shape)
        return straight_through(fn.onehot_argmax(z), self._relax(z))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        if value.dtype == torch.bool:
            value = value.to(self._param.dtype)
        return fn.categorical_log_mass(self.logits, value)


class GumbelRaoOneHotCategorical(StraightThroughOneHotCategorical):
    r"""One-hot categorical samples with the Gumbel-Rao gradient (Paulus et al. 2021).

    Forward: :math:`b = \mathrm{onehot}(\arg\max z)` as in
    :class:`StraightThroughOneHotCategorical`. Backward: the gradient of
    :math:`\frac1K\sum_{k=1}^K \mathrm{softmax}(\tilde z_k/\lambda)` with independent
    :math:`\tilde z_k \sim p(z \mid \arg\max z = b)` (``functional.gumbel_conditional_sample``)
    whose Gumbel noise :math:`\tilde z_k - \log\theta` is held fixed in the backward pass
    (as in straight-through, :math:`\partial\tilde z_k/\partial\ell` is that of
    :math:`\log\theta`): a Monte-Carlo estimate of
    :math:`E[\partial\,\mathrm{softmax}(z/\lambda)/\partial\ell \mid b]`, the
    straight-through gradient with the same expectation and lower variance.

    Example::

        >>> logits = torch.tensor([1.0, 0.0, -1.0], requires_grad=True)
        >>> d = GumbelRaoOneHotCategorical(0.5, logits=logits, num_samples=100)
        >>> b = d.rsample((4,))
        >>> b.shape, bool((b.sum(-1) == 1).all())
        (torch.Size([4, 3]), True)

    :param temperature: :math:`\lambda > 0`.
    :param logits: unnormalised log-probabilities (exactly one of ``logits``, ``probs``).
    :param probs: probabilities.
    :param num_samples: :math:`K \ge 1`, conditional draws per sample.
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """

    def __init__(
        self,
        temperature: Tensor | float,
        probs: Tensor | None = None,
        logits: Tensor | None = None,
        num_samples: int = 10,
        validate_args: bool | None = None,
    ) -> None:
        self.num_samples = check_num_samples(num_samples)
        super().__init__(temperature, logits=logits, probs=probs, validate_args=validate_args)

    def expand(
        self, batch_shape: SampleShape, _instance: GumbelRaoOneHotCategorical | None = None
    ) -> GumbelRaoOneHotCategorical:
        new = self._get_checked_instance(GumbelRaoOneHotCategorical, _instance)
        new = super().expand(batch_shape, _instance=new)
        new.num_samples = self.num_samples
        return new

    def rsample(self, sample_shape: SampleShape = ()) -> Tensor:
        with torch.no_grad():
            hard = fn.onehot_argmax(self._noise(sample_shape))
        relaxation = GumbelCategorical(logits=self.logits, validate_args=False)
        soft = relaxation.rao_blackwellized_relax(hard, self.temperature, self.num_samples)
        return straight_through(hard, soft)


class ReinMaxBernoulli(StraightThroughBernoulli):
    r"""Bernoulli samples with the ReinMax gradient (Liu et al. 2023). **Biased.**

    Forward: :math:`b \sim \mathrm{Bernoulli}(\sigma(\ell))`, exactly 0 or 1. Backward
    (``functional.reinmax_bernoulli``), with :math:`\pi_1 = \frac12(\sigma(\ell/\lambda)
    + b)`:

    .. math:: \frac{\partial\,\mathrm{rsample}}{\partial \ell}
              = 2\,\pi_1(1 - \pi_1) - \tfrac12\,\sigma(\ell)(1 - \sigma(\ell)).

    The arguments are in the order of Pyro's relaxed distributions
    (``temperature, probs, logits``); the paper prefers :math:`\lambda \ge 1` and at
    :math:`\lambda = 1` the expected gradient of an :math:`f` quadratic in :math:`b` is
    exact. The temperature gets no gradient (as in the official code).

    Example::

        >>> logits = torch.tensor([0.0, 3.0], requires_grad=True)
        >>> b = ReinMaxBernoulli(1.0, logits=logits).rsample((4,))
        >>> b.shape, bool(((b == 0) | (b == 1)).all()), b.requires_grad
        (torch.Size([4, 2]), True, True)

    :param temperature: :math:`\lambda > 0`.
    :param probs: :math:`\theta = P(b = 1)` (exactly one of ``probs``, ``logits``).
    :param logits: log-odds.
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """

    def __init__(
        self,
        temperature: Tensor | float,
        probs: Tensor | float | None = None,
        logits: Tensor | float | None = None,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(temperature, logits=logits, probs=probs, validate_args=validate_args)

    def expand(
        self, batch_shape: SampleShape, _instance: ReinMaxBernoulli | None = None
    ) -> ReinMaxBernoulli:
        new = self._get_checked_instance(ReinMaxBernoulli, _instance)
        return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape: SampleShape = ()) -> Tensor:
        with torch.no_grad():
            hard = fn.heaviside(self._noise(sample_shape))
        logits = self.logits.expand(hard.shape)
        return fn.reinmax_bernoulli(logits, hard, self.temperature)


class ReinMaxOneHotCategorical(StraightThroughOneHotCategorical):
    r"""One-hot categorical samples with the ReinMax gradient (Liu et al. 2023). **Biased.**

    Forward: :math:`D = \mathrm{onehot}(\arg\max z)`, a sample of
    :math:`\mathrm{softmax}(\ell)`, exactly one-hot. Backward
    (``functional.reinmax_categorical``), with :math:`J(p) = \mathrm{diag}(p) - pp^\top`,
    :math:`\pi_0 = \mathrm{softmax}(\ell)` and
    :math:`\pi_1 = \frac12(\mathrm{softmax}(\ell/\lambda) + D)`:

    .. math:: \frac{\partial\,\mathrm{rsample}}{\partial \ell}
              = 2\,J(\pi_1) - \tfrac12\,J(\pi_0).

    Arguments in the order of Pyro's relaxed distributions (``temperature, probs,
    logits``); the paper prefers :math:`\lambda \ge 1`.

    Example::

        >>> logits = torch.tensor([1.0, 0.0, -1.0], requires_grad=True)
        >>> b = ReinMaxOneHotCategorical(1.0, logits=logits).rsample((2,))
        >>> b.sum(-1).tolist(), b.requires_grad
        ([1.0, 1.0], True)

    :param temperature: :math:`\lambda > 0` (broadcasting against the batch shape).
    :param probs: probabilities (exactly one of ``probs``, ``logits``).
    :param logits: unnormalised log-probabilities.
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """

    def __init__(
        self,
        temperature: Tensor | float,
        probs: Tensor | None = None,
        logits: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(temperature, logits=logits, probs=probs, validate_args=validate_args)

    def expand(
        self, batch_shape: SampleShape, _instance: ReinMaxOneHotCategorical | None = None
    ) -> ReinMaxOneHotCategorical:
        new = self._get_checked_instance(ReinMaxOneHotCategorical, _instance)
        return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape: SampleShape = ()) -> Tensor:
        with torch.no_grad():
            hard = fn.onehot_argmax(self._noise(sample_shape))
        logits = self.logits.expand(hard.shape)
        return fn.reinmax_categorical(logits, hard, self.temperature.unsqueeze(-1))
