r"""Conditional relaxations: the continuous variable given its discrete value.

For :math:`z \sim p(z \mid \theta)` with discrete value :math:`b = H(z)` (Bernoulli) or
:math:`b = \arg\max z` (categorical), these give :math:`\tilde z \sim p(z \mid b, \theta)`,
reparameterised in :math:`\theta` with :math:`b` held fixed. REBAR and RELAX use
:math:`\tilde z` for their control variate; Gumbel-Rao averages the straight-through gradient
over several :math:`\tilde z`. By construction the threshold of :math:`\tilde z` is always
:math:`b`, and :math:`\sum_b q(b)\, p(z \mid b) = p(z)`.

References:

- G. Tucker, A. Mnih, C. Maddison, D. Lawson, J. Sohl-Dickstein (2017), *REBAR:
  Low-variance, unbiased gradient estimates for discrete latent variable models*, appendix.
- W. Grathwohl, D. Choi, Y. Wu, G. Roeder, D. Duvenaud (2018), *Backpropagation through the
  Void: Optimizing control variates for black-box gradient estimation* (RELAX).
- M. Paulus, C. Maddison, A. Krause (2021), *Rao-Blackwellizing the Straight-Through
  Gumbel-Softmax Gradient Estimator*.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints

from . import functional as fn
from ._densities import gumbel_log_density, logistic_log_density
from ._params import (
    BernoulliParams,
    CategoricalParams,
    SampleShape,
    as_float_tensor,
    broadcast_to_batch,
)

__all__ = ["ConditionalLogisticBernoulli", "ConditionalGumbelCategorical"]


class _ThresholdIs(constraints.Constraint):
    """Real numbers whose threshold :math:`1[z > 0]` equals ``outcome``."""

    is_discrete = False
    event_dim = 0

    def __init__(self, outcome: Tensor) -> None:
        self.outcome = outcome
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        return (value > 0) == (self.outcome > 0.5)


class _ArgmaxIs(constraints.Constraint):
    """Real vectors whose argmax is the index of the one-hot ``outcome``."""

    is_discrete = False
    event_dim = 1

    def __init__(self, outcome: Tensor) -> None:
        self.outcome = outcome
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        return value.argmax(-1) == self.outcome.argmax(-1)


class ConditionalLogisticBernoulli(BernoulliParams):
    r"""The logistic variable :math:`z \sim \mathrm{Logistic}(\ell, 1)` conditioned on its
    threshold: :math:`\tilde z \sim p(z \mid H(z) = b)`.

    A truncated logistic: with :math:`\theta = \sigma(\ell)`,

    .. math:: p(\tilde z \mid b) = \frac{\mathrm{Logistic}(\tilde z; \ell, 1)}{P(b)}
              \, 1[H(\tilde z) = b],
              \qquad P(1) = \theta,\; P(0) = 1 - \theta.

    Sampled by inverse CDF on the half line (``functional.logistic_conditional_sample``):
    :math:`v' = v(1-\theta)` for :math:`b = 0`, :math:`v' = v\theta + 1 - \theta` for
    :math:`b = 1`, :math:`\tilde z = \ell + \log v' - \log(1 - v')`, reparameterised in
    :math:`\ell` for fixed :math:`b` and :math:`H(\tilde z) = b` exactly.
    ``log_prob`` is ``-inf`` off the half line (or a validation error).

    Example::

        >>> b = torch.tensor([0.0, 1.0, 1.0])
        >>> d = ConditionalLogisticBernoulli(logits=torch.zeros(3), outcome=b)
        >>> z = d.rsample((1000,))
        >>> bool(((z > 0).float() == b).all())
        True
        >>> d = ConditionalLogisticBernoulli(logits=torch.zeros(3), outcome=b, validate_args=False)
        >>> d.log_prob(torch.tensor([1.0, 1.0, -1.0]))  # outside the half line: -inf
        tensor([   -inf, -0.9334,    -inf])

    :param logits: log-odds :math:`\ell` (exactly one of ``logits``, ``probs``).
    :param probs: :math:`\theta`.
    :param outcome: the threshold :math:`b \in \{0, 1\}` to condition on; broadcasts against
        ``logits`` (``batch_shape`` is the broadcast shape).
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """

    arg_constraints = {**BernoulliParams.arg_constraints, "outcome": constraints.boolean}
    has_rsample = True

    def __init__(
        self,
        probs: Tensor | float | None = None,
        logits: Tensor | float | None = None,
        outcome: Tensor | float | None = None,
        validate_args: bool | None = None,
    ) -> None:
        param = self._init_param(logits, probs)
        if outcome is None:
            raise ValueError("outcome (the value b = H(z) to condition on) must be given")
        outcome = as_float_tensor(outcome, like=param)
        batch_shape = broadcast_to_batch("outcome", outcome, param.shape)
        self._broadcast_param(batch_shape)
        self.outcome = outcome.expand(batch_shape)
        super().__init__(batch_shape, validate_args=validate_args)

    def expand(
        self, batch_shape: SampleShape, _instance: ConditionalLogisticBernoulli | None = None
    ) -> ConditionalLogisticBernoulli:
        new = self._get_checked_instance(ConditionalLogisticBernoulli, _instance)
        batch_shape = torch.Size(batch_shape)
        self._expand_param_into(new, batch_shape)
        new.outcome = self.outcome.expand(batch_shape)
        super(ConditionalLogisticBernoulli, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        return _ThresholdIs(self.outcome)

    def rsample(self, sample_shape: SampleShape = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        logits = self.logits.expand(shape)
        v = fn.uniform_like(logits)
        return fn.logistic_conditional_sample(logits, self.outcome.expand(shape), v)

    def coupled_rsample(self, z: Tensor) -> Tensor:
        r"""The conditional sample that equals ``z`` numerically (up to rounding) but carries
        the conditional reparameterisation gradient in the logits.

        ``z`` must come from :class:`LogisticBernoulli` with the same logits and satisfy
        :math:`H(z) =` ``outcome``. This is REBAR's coupling of :math:`\tilde z` to :math:`z`
        (the noise is recovered by ``functional.logistic_conditional_noise``).
        """
        v = fn.logistic_conditional_noise(self.logits, z, self.outcome)
        return fn.logistic_conditional_sample(self.logits, self.outcome, v)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        log_mass = fn.bernoulli_log_mass(self.logits, self.outcome)
        log_density = logistic_log_density(value - self.logits) - log_mass
        inside = (value > 0) == (self.outcome > 0.5)
        return torch.where(inside, log_density, torch.full_like(log_density, -float("inf")))


class ConditionalGumbelCategorical(CategoricalParams):
    r"""The Gumbel-max vector :math:`z_k = \log\theta_k + g_k` conditioned on its argmax:
    :math:`\tilde z \sim p(z \mid \arg\max z = b)` for a one-hot ``outcome`` :math:`b`.

    .. math:: p(\tilde z \mid b) = \frac{1}{\theta_b} \prod_k
              \exp\!\big(-(\tilde z_k - \log\theta_k) - e^{-(\tilde z_k - \log\theta_k)}\big)
              \, 1[\arg\max \tilde z = b].

    Sampled as in Tucker et al. (2017): :math:`\tilde z_b = -\log(-\log v_b)` (the maximum is
    a standard Gumbel independent of the argmax) and, for :math:`i \ne b`, Gumbels truncated
    below it, :math:`\tilde z_i = -\log(-\log(v_i)/\theta_i - \log v_b)`, reparameterised in
    the logits with :math:`\arg\max \tilde z = b` exactly.

    Example::

        >>> b = torch.tensor([0.0, 0.0, 1.0])
        >>> logits = torch.tensor([2.0, 1.0, -3.0])
        >>> z = ConditionalGumbelCategorical(logits=logits, outcome=b).rsample((1000,))
        >>> bool((z.argmax(-1) == 2).all())
        True
        >>> d = ConditionalGumbelCategorical(logits=logits, outcome=b, validate_args=False)
        >>> d.log_prob(torch.tensor([1.0, 0.0, 0.0]))  # argmax is not b: -inf
        tensor(-inf)

    :param logits: unnormalised log-probabilities (exactly one of ``logits``, ``probs``).
    :param probs: probabilities.
    :param outcome: one-hot vector(s) of the same number of categories; the batch dimensions
        broadcast against those of ``logits``.
    :param validate_args: as in :class:`torch.distributions.Distribution`.
    """

    arg_constraints = {**CategoricalParams.arg_constraints, "outcome": constraints.one_hot}
    has_rsample = True

    def __init__(
        self,
        probs: Tensor | None = None,
        logits: Tensor | None = None,
        outcome: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        param = self._init_param(logits, probs)
        if outcome is None:
            raise ValueError("outcome (the one-hot argmax to condition on) must be given")
        outcome = as_float_tensor(outcome, like=param)
        num_categories = param.shape[-1]
        if outcome.dim() < 1 or outcome.shape[-1] != num_categories:
            raise ValueError(
                f"outcome must be one-hot over the {num_categories} categories in its last "
                f"dimension, got shape {tuple(outcome.shape)}"
            )
        batch_shape = broadcast_to_batch("outcome", outcome, param.shape[:-1], event_dims=1)
        self._broadcast_param(batch_shape)
        self.outcome = outcome.expand(batch_shape + param.shape[-1:])
        super().__init__(batch_shape, param.shape[-1:], validate_args=validate_args)

    def expand(
        self, batch_shape: SampleShape, _instance: ConditionalGumbelCategorical | None = None
    ) -> ConditionalGumbelCategorical:
        new = self._get_checked_instance(ConditionalGumbelCategorical, _instance)
        batch_shape = torch.Size(batch_shape)
        self._expand_param_into(new, batch_shape)
        new.outcome = self.outcome.expand(batch_shape + self.event_shape)
        super(ConditionalGumbelCategorical, new).__init__(
            batch_shape, self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self) -> constraints.Constraint:
        return _ArgmaxIs(self.outcome)

    def rsample(self, sample_shape: SampleShape = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        logits = self.logits.expand(shape)
        v = fn.uniform_like(logits)
        return fn.gumbel_conditional_sample(logits, self.outcome.expand(shape), v)

    def coupled_rsample(self, z: Tensor) -> Tensor:
        r"""The conditional sample that equals ``z`` numerically (up to rounding) but carries
        the conditional reparameterisation gradient in the logits.

        ``z`` must come from :class:`GumbelCategorical` with the same logits and have argmax
        ``outcome`` (REBAR's coupling; noise from ``functional.gumbel_conditional_noise``).
        """
        v = fn.gumbel_conditional_noise(self.logits, z, self.outcome)
        return fn.gumbel_conditional_sample(self.logits, self.outcome, v)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        log_theta = torch.log_softmax(self.logits, -1)
        log_density = gumbel_log_density(value - log_theta).sum(-1) - fn.categorical_log_mass(
            self.logits, self.outcome
        )
        inside = value.argmax(-1) == self.outcome.argmax(-1)
        return torch.where(inside, log_density, torch.full_like(log_density, -float("inf")))
