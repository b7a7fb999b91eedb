r"""The straight-through family: hard samples, relaxed gradients, composed from two parts.

``rsample`` returns the discrete value (exactly 0/1, or exactly one-hot) in the forward pass
and, in the backward pass, the gradient of a surrogate. Each distribution is composed, as
:class:`torch.distributions.RelaxedBernoulli` is composed from a base law and a transform,
of

- a **law** (``_Bernoulli`` or ``_OneHot``): the relaxation whose threshold is the
  sample (``base_dist``, a :class:`~pyro_discrete.distributions.LogisticBernoulli` or
  :class:`~pyro_discrete.distributions.GumbelCategorical`), the support, the log-mass and
  the entropy;
- a **gradient rule** (``_StraightThroughRule``, ``_GumbelRaoRule``,
  ``_ReinMaxRule``, ...): the value built from the noise :math:`z` and the hard sample
  :math:`b`, with the rule's options (``num_samples``, ...).

A public class is one law and one rule, so the Bernoulli and one-hot twins share all code:

- straight-through (Bengio et al. 2013; Jang et al. 2017): the relaxation of the very noise
  that produced the sample, :math:`\sigma(z/\lambda)` or :math:`\mathrm{softmax}(z/\lambda)`;
- Gumbel-Rao (Paulus et al. 2021): the average over :math:`K` conditional draws
  :math:`\tilde z_k \sim p(z \mid b)` of the same relaxation, with their noise held fixed
  as in straight-through (same mean as straight-through, lower variance);
- ReinMax (Liu et al. 2023): the second-order (Heun) correction of straight-through,
  :math:`2J(\pi_1) - \frac12 J(\pi_0)` with :math:`\pi_0` the probabilities and
  :math:`\pi_1 = \frac12(\mathrm{softmax}(\ell/\lambda) + b)`; **biased**, exact in
  expectation for an :math:`f` quadratic in :math:`b` at :math:`\lambda = 1`;
- decoupled straight-through, ReinMax-Rao and ReinMax-CV: see their classes.

The returned value is ``b + (s - s.detach())`` with ``s`` the rule's surrogate.
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

import numbers
from typing import ClassVar

import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

from pyro_discrete.estimators.reinmax_rao import heun_midpoints

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
    "DecoupledStraightThroughBernoulli",
    "DecoupledStraightThroughOneHotCategorical",
    "ReinMaxRaoBernoulli",
    "ReinMaxRaoOneHotCategorical",
    "heun_value",
]


def heun_value(logits: Tensor, hard: Tensor, midpoints: Tensor, one_hot: bool) -> Tensor:
    r"""``hard`` in the forward pass; in the backward pass the Heun (ReinMax) Jacobian
    :math:`\frac2K\sum_k J(m_k) - \frac12 J(\pi_0)` for the ``midpoints`` :math:`m_k`
    stacked along a leading dim (ReinMax: the single midpoint
    :math:`\frac12(\mathrm{softmax}(\ell/\lambda) + D)`).

    Built as ``hard + (s - s.detach())`` with :math:`s = \frac2K\sum_k J(m_k)\,\ell -
    \frac12\pi_0`, the midpoints held constant (:math:`J` is symmetric, so the gradient of
    :math:`J(m)\ell` in :math:`\ell` is :math:`J(m)`); the temperature gets no gradient,
    as in ReinMax's official code.
    """
    midpoints = midpoints.detach()
    if one_hot:
        linear = midpoints * logits - midpoints * (midpoints * logits).sum(-1, keepdim=True)
        pi_0 = torch.softmax(logits, -1)
    else:
        linear = midpoints * (1 - midpoints) * logits
        pi_0 = torch.sigmoid(logits)
    return straight_through(hard, 2 * linear.mean(0) - 0.5 * pi_0)


def _positive_number(name: str, value: float) -> float:
    """``value`` as a float, or a ``ValueError`` naming the option ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


class _HardSample(TorchDistribution):
    """A discrete law sampled through its relaxation ``base_dist``; the gradient rule
    (:meth:`_value`) and the law (class attributes) come from the two mixins."""

    has_rsample = True
    #: the relaxation whose threshold is the sample (set by the law)
    relaxation_type: ClassVar[type]
    #: whether the value is one-hot (set by the law)
    one_hot: ClassVar[bool]
    #: names of the rule's options, copied by :meth:`expand`
    rule_options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        temperature: Tensor | float,
        probs: Tensor | float | None = None,
        logits: Tensor | float | None = None,
        validate_args: bool | None = None,
    ) -> None:
        # The relaxation does not validate: this distribution validates the same parameters
        # (its arg_constraints), and the relaxation's per-call temperature check would
        # synchronise with an accelerator at every rsample.
        base = self.relaxation_type(probs=probs, logits=logits, validate_args=False)
        check_temperature(temperature, validation_enabled(validate_args))
        temperature = as_float_tensor(temperature, like=base._param)
        batch_shape = broadcast_to_batch("temperature", temperature, base.batch_shape)
        self.base_dist = base.expand(batch_shape)
        self.temperature = temperature.expand(batch_shape)
        super().__init__(batch_shape, base.event_shape, validate_args=validate_args)

    def expand(self, batch_shape: SampleShape, _instance: _HardSample | None = None) -> _HardSample:
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = torch.Size(batch_shape)
        new.base_dist = self.base_dist.expand(batch_shape)
        new.temperature = self.temperature.expand(batch_shape)
        for name in self.rule_options:
            setattr(new, name, getattr(self, name))
        super(_HardSample, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def logits(self) -> Tensor:
        return self.base_dist.logits

    @property
    def probs(self) -> Tensor:
        return self.base_dist.probs

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def variance(self) -> Tensor:
        return self.probs * (1 - self.probs)

    def _temperature_per_value(self, temperature: Tensor) -> Tensor:
        """A batch-shaped temperature broadcast against a value (the law's event dims)."""
        return temperature.reshape(temperature.shape + (1,) * len(self.event_shape))

    def sample(self, sample_shape: SampleShape = ()) -> Tensor:
        with torch.no_grad():
            return self.base_dist.threshold(self.base_dist.rsample(sample_shape))

    def rsample(self, sample_shape: SampleShape = ()) -> Tensor:
        z = self.base_dist.rsample(sample_shape)
        return self._value(z, self.base_dist.threshold(z).detach())

    def _value(self, z: Tensor, hard: Tensor) -> Tensor:
        """The value at noise ``z`` with threshold ``hard``: the gradient rule."""
        raise NotImplementedError

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        if value.dtype == torch.bool:
            value = value.to(self.base_dist._param.dtype)
        return self._log_mass(self.logits, value)


# ---------------------------------------------------------------------------------------
# the laws
# ---------------------------------------------------------------------------------------


class _Bernoulli(_HardSample):
    """Bernoulli law: the threshold of a logistic variable."""

    relaxation_type = LogisticBernoulli
    arg_constraints = {**BernoulliParams.arg_constraints, "temperature": constraints.positive}
    support = constraints.boolean
    _log_mass = staticmethod(fn.bernoulli_log_mass)
    one_hot = False

    def entropy(self) -> Tensor:
        return F.binary_cross_entropy_with_logits(self.logits, self.probs, reduction="none")


class _OneHot(_HardSample):
    """One-hot categorical law: the argmax of a Gumbel-perturbed vector."""

    relaxation_type = GumbelCategorical
    arg_constraints = {**CategoricalParams.arg_constraints, "temperature": constraints.positive}
    support = constraints.one_hot
    _log_mass = staticmethod(fn.categorical_log_mass)
    one_hot = True

    def entropy(self) -> Tensor:
        return -(self.probs * torch.log_softmax(self.logits, -1)).sum(-1)


# ---------------------------------------------------------------------------------------
# the gradient rules
# ---------------------------------------------------------------------------------------


class _StraightThroughRule(_HardSample):
    def _value(self, z: Tensor, hard: Tensor) -> Tensor:
        return straight_through(hard, self.base_dist.relax(z, self.temperature))


class _GumbelRaoRule(_HardSample):
    rule_options = ("num_samples",)

    def __init__(
        self,
        temperature: Tensor | float,
        probs: Tensor | float | None = None,
        logits: Tensor | float | None = None,
        num_samples: int = 10,
        validate_args: bool | None = None,
    ) -> None:
        self.num_samples = check_num_samples(num_samples)
        super().__init__(temperature, probs=probs, logits=logits, validate_args=validate_args)

    def _value(self, z: Tensor, hard: Tensor) -> Tensor:
        soft = self.base_dist.rao_blackwellized_relax(hard, self.temperature, self.num_samples)
        return straight_through(hard, soft)


class _ReinMaxRule(_HardSample):
    def _endpoints(self, hard: Tensor) -> Tensor:
        """The endpoints of the Heun midpoints, stacked along a leading dim."""
        return hard.unsqueeze(0)

    def _value(self, z: Tensor, hard: Tensor) -> Tensor:
        logits = self.logits.expand(hard.shape)
        temperature = self.temperature.expand(hard.shape[: hard.dim() - len(self.event_shape)])
        midpoints = heun_midpoints(logits, self._endpoints(hard), temperature, self.one_hot)
        return heun_value(logits, hard, midpoints, self.one_hot)


class _ReinMaxRaoRule(_ReinMaxRule):
    rule_options = ("num_samples", "endpoint_temperature")

    def __init__(
        self,
        temperature: Tensor | float,
        probs: Tensor | float | None = None,
        logits: Tensor | float | None = None,
        endpoint_temperature: float = 0.1,
        num_samples: int = 10,
        validate_args: bool | None = None,
    ) -> None:
        self.endpoint_temperature = _positive_number("endpoint_temperature", endpoint_temperature)
        self.num_samples = check_num_samples(num_samples)
        super().__init__(temperature, probs=probs, logits=logits, validate_args=validate_args)

    def _endpoints(self, hard: Tensor) -> Tensor:
        # K relaxed endpoints softmax(z~_k / tau), z~_k ~ p(z | hard); no gradient flows
        # through them (as through ReinMax's midpoint)
        with torch.no_grad():
            z = self.base_dist.conditional(hard).rsample((self.num_samples,))
            return self.base_dist.relax(z, self.endpoint_temperature)


class _DecoupledRule(_StraightThroughRule):
    rule_options = ("forward_temperature",)

    def __init__(
        self,
        temperature: Tensor | float,
        probs: Tensor | float | None = None,
        logits: Tensor | float | None = None,
        forward_temperature: float = 1.0,
        validate_args: bool | None = None,
    ) -> None:
        self.forward_temperature = _positive_number("forward_temperature", forward_temperature)
        if self.forward_temperature != 1.0:
            # the law of the samples is the tempered one, softmax(logits / tau_f)
            law = self.relaxation_type(probs=probs, logits=logits, validate_args=validate_args)
            probs, logits = None, law.logits / self.forward_temperature
        super().__init__(temperature, probs=probs, logits=logits, validate_args=validate_args)


# ---------------------------------------------------------------------------------------
# the public distributions: one law and one rule each
# ---------------------------------------------------------------------------------------


class StraightThroughBernoulli(_Bernoulli, _StraightThroughRule):
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
    :param probs: :math:`\theta = P(b = 1)` (exactly one of ``probs``, ``logits``).
    :param logits: log-odds.
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """


class StraightThroughOneHotCategorical(_OneHot, _StraightThroughRule):
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
    :param probs: probabilities (exactly one of ``probs``, ``logits``).
    :param logits: unnormalised log-probabilities.
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """


class GumbelRaoBernoulli(_Bernoulli, _GumbelRaoRule):
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
    :param probs: :math:`\theta = P(b = 1)` (exactly one of ``probs``, ``logits``).
    :param logits: log-odds.
    :param num_samples: :math:`K \ge 1`, conditional draws per sample.
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """


class GumbelRaoOneHotCategorical(_OneHot, _GumbelRaoRule):
    r"""One-hot categorical samples with the Gumbel-Rao gradient (Paulus et al. 2021).

    Forward: :math:`b = \mathrm{onehot}(\arg\max z)` as in
    :class:`StraightThroughOneHotCategorical`. Backward: the gradient of
    :math:`\frac1K\sum_{k=1}^K \mathrm{softmax}(\tilde z_k/\lambda)` with independent
    :math:`\tilde z_k \sim p(z \mid \arg\max z = b)` (``functional.gumbel_conditional_sample``)
    whose Gumbel noise :math:`\tilde z_k - \log\theta` is held fixed in the backward pass:
    a Monte-Carlo estimate of :math:`E[\partial\,\mathrm{softmax}(z/\lambda)/\partial\ell
    \mid b]`, the straight-through gradient with the same expectation and lower variance.

    Example::

        >>> logits = torch.tensor([1.0, 0.0, -1.0], requires_grad=True)
        >>> d = GumbelRaoOneHotCategorical(0.5, logits=logits, num_samples=100)
        >>> b = d.rsample((4,))
        >>> b.shape, bool((b.sum(-1) == 1).all())
        (torch.Size([4, 3]), True)

    :param temperature: :math:`\lambda > 0`.
    :param probs: probabilities (exactly one of ``probs``, ``logits``).
    :param logits: unnormalised log-probabilities.
    :param num_samples: :math:`K \ge 1`, conditional draws per sample.
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """


class ReinMaxBernoulli(_Bernoulli, _ReinMaxRule):
    r"""Bernoulli samples with the ReinMax gradient (Liu et al. 2023). **Biased.**

    Forward: :math:`b \sim \mathrm{Bernoulli}(\sigma(\ell))`, exactly 0 or 1. Backward
    (``functional.reinmax_bernoulli``), with :math:`\pi_1 = \frac12(\sigma(\ell/\lambda)
    + b)`:

    .. math:: \frac{\partial\,\mathrm{rsample}}{\partial \ell}
              = 2\,\pi_1(1 - \pi_1) - \tfrac12\,\sigma(\ell)(1 - \sigma(\ell)).

    The paper prefers :math:`\lambda \ge 1`; at :math:`\lambda = 1` the expected gradient of
    an :math:`f` quadratic in :math:`b` is exact. The temperature gets no gradient (as in
    the official code).

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


class ReinMaxOneHotCategorical(_OneHot, _ReinMaxRule):
    r"""One-hot categorical samples with the ReinMax gradient (Liu et al. 2023). **Biased.**

    Forward: :math:`D = \mathrm{onehot}(\arg\max z)`, a sample of
    :math:`\mathrm{softmax}(\ell)`, exactly one-hot. Backward
    (``functional.reinmax_categorical``), with :math:`J(p) = \mathrm{diag}(p) - pp^\top`,
    :math:`\pi_0 = \mathrm{softmax}(\ell)` and
    :math:`\pi_1 = \frac12(\mathrm{softmax}(\ell/\lambda) + D)`:

    .. math:: \frac{\partial\,\mathrm{rsample}}{\partial \ell}
              = 2\,J(\pi_1) - \tfrac12\,J(\pi_0).

    Example::

        >>> logits = torch.tensor([1.0, 0.0, -1.0], requires_grad=True)
        >>> b = ReinMaxOneHotCategorical(1.0, logits=logits).rsample((2,))
        >>> b.sum(-1).tolist(), b.requires_grad
        ([1.0, 1.0], True)

    :param temperature: :math:`\lambda > 0` (broadcasting against the batch shape; the
        paper prefers :math:`\lambda \ge 1`).
    :param probs: probabilities (exactly one of ``probs``, ``logits``).
    :param logits: unnormalised log-probabilities.
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """


class DecoupledStraightThroughBernoulli(_Bernoulli, _DecoupledRule):
    r"""Bernoulli samples of the tempered law :math:`\sigma(\ell/\tau_f)` with the
    straight-through gradient at a separate temperature :math:`\tau_b`. **Biased.**

    Decoupled straight-through (Shah et al. 2024; see
    :mod:`pyro_discrete.estimators.decoupled_st` for what is ours): forward
    :math:`b = H(z)`, :math:`z = \ell/\tau_f + \log u - \log(1-u)`; backward the gradient
    of :math:`\sigma(z/\tau_b)`. ``logits`` / ``probs`` / ``log_prob`` are those of the
    tempered law, so this is :class:`StraightThroughBernoulli` at temperature
    :math:`\tau_b` with logits :math:`\ell/\tau_f`, and exactly it at :math:`\tau_f = 1`.

    Example::

        >>> logits = torch.tensor([0.0, 3.0], requires_grad=True)
        >>> d = DecoupledStraightThroughBernoulli(2.0, logits=logits, forward_temperature=1.5)
        >>> d.logits
        tensor([0., 2.], grad_fn=<ExpandBackward0>)
        >>> b = d.rsample((3,))
        >>> bool(((b == 0) | (b == 1)).all()), b.requires_grad
        (True, True)

    :param temperature: the backward temperature :math:`\tau_b > 0`.
    :param probs: :math:`\theta = P(b = 1)` before tempering (exactly one of ``probs``,
        ``logits``).
    :param logits: log-odds :math:`\ell` before tempering.
    :param forward_temperature: :math:`\tau_f > 0` (a number), the temperature of the
        sample's law.
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """


class DecoupledStraightThroughOneHotCategorical(_OneHot, _DecoupledRule):
    r"""One-hot samples of the tempered law :math:`\mathrm{softmax}(\ell/\tau_f)` with
    the straight-through Gumbel-softmax gradient at a separate temperature :math:`\tau_b`.
    **Biased.**

    Forward :math:`D = \mathrm{onehot}(\arg\max z)`, :math:`z = \ell/\tau_f + g` with
    Gumbel noise :math:`g`; backward the gradient of :math:`\mathrm{softmax}(z/\tau_b)`
    (:mod:`pyro_discrete.estimators.decoupled_st`). ``logits`` / ``probs`` / ``log_prob``
    are those of the tempered law; at :math:`\tau_f = 1` this is exactly
    :class:`StraightThroughOneHotCategorical` at temperature :math:`\tau_b`.

    Example::

        >>> d = DecoupledStraightThroughOneHotCategorical(
        ...     0.5, logits=torch.tensor([2.0, 0.0, 0.0]), forward_temperature=2.0
        ... )
        >>> d.probs
        tensor([0.5761, 0.2119, 0.2119])
        >>> d.rsample((2,)).sum(-1).tolist()
        [1.0, 1.0]

    :param temperature: the backward temperature :math:`\tau_b > 0` (float or tensor
        broadcasting against the batch shape).
    :param probs: probabilities before tempering (exactly one of ``probs``, ``logits``).
    :param logits: unnormalised log-probabilities :math:`\ell` before tempering.
    :param forward_temperature: :math:`\tau_f > 0` (a number).
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """


class ReinMaxRaoBernoulli(_Bernoulli, _ReinMaxRaoRule):
    r"""Bernoulli samples with the ReinMax-Rao gradient (our construction, see
    :mod:`pyro_discrete.estimators.reinmax_rao`). **Biased.**

    Forward: :math:`b \sim \mathrm{Bernoulli}(\sigma(\ell))`, exactly 0 or 1. Backward:
    ReinMax's :math:`2\pi_1(1-\pi_1) - \frac12\sigma'(\ell)` with the midpoint's hard
    endpoint :math:`b` replaced by relaxed endpoints :math:`\sigma(\tilde z_k/\tau)`,
    :math:`\tilde z_k \sim p(z \mid b)`, and the midpoint Jacobians averaged over
    :math:`K` draws. As :math:`\tau \to 0` it is :class:`ReinMaxBernoulli`.

    Example::

        >>> logits = torch.tensor([0.0, 3.0], requires_grad=True)
        >>> b = ReinMaxRaoBernoulli(1.0, logits=logits, num_samples=4).rsample((5,))
        >>> b.shape, bool(((b == 0) | (b == 1)).all()), b.requires_grad
        (torch.Size([5, 2]), True, True)

    :param temperature: ReinMax's :math:`\lambda > 0` (1.0 makes ReinMax exact for
        quadratic :math:`f`).
    :param probs: :math:`\theta = P(b = 1)` (exactly one of ``probs``, ``logits``).
    :param logits: log-odds.
    :param endpoint_temperature: :math:`\tau > 0` (a number) of the relaxed endpoint.
    :param num_samples: :math:`K \ge 1`, conditional draws per sample.
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """


class ReinMaxRaoOneHotCategorical(_OneHot, _ReinMaxRaoRule):
    r"""One-hot categorical samples with the ReinMax-Rao gradient (our construction, see
    :mod:`pyro_discrete.estimators.reinmax_rao`). **Biased.**

    Forward: :math:`D = \mathrm{onehot}(\arg\max z)`, exactly one-hot. Backward:
    :math:`\frac2K\sum_k J(\pi_{1,k}) - \frac12 J(\pi_0)` with
    :math:`\pi_{1,k} = \frac12(\mathrm{softmax}(\ell/\lambda) +
    \mathrm{softmax}(\tilde z_k/\tau))`, :math:`\tilde z_k \sim p(z \mid D)`.

    Example::

        >>> logits = torch.tensor([1.0, 0.0, -1.0], requires_grad=True)
        >>> b = ReinMaxRaoOneHotCategorical(1.0, logits=logits).rsample((2,))
        >>> b.sum(-1).tolist(), b.requires_grad
        ([1.0, 1.0], True)

    :param temperature: ReinMax's :math:`\lambda > 0`.
    :param probs: probabilities (exactly one of ``probs``, ``logits``).
    :param logits: unnormalised log-probabilities.
    :param endpoint_temperature: :math:`\tau > 0` (a number) of the relaxed endpoint.
    :param num_samples: :math:`K \ge 1`, conditional draws per sample.
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """
