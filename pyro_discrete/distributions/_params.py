"""Parameter handling shared by the distributions in :mod:`pyro_discrete.distributions`.

Bernoulli-type classes take ``logits=`` or ``probs=`` (exactly one, like
:class:`torch.distributions.Bernoulli`) and derive the other lazily; categorical-type classes
do the same with a trailing event dimension and normalised logits, like
:class:`torch.distributions.Categorical`.
"""

from __future__ import annotations

import numbers

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.distributions.utils import lazy_property, logits_to_probs, probs_to_logits

# sample_shape arguments: torch.Size or any tuple of ints, as torch accepts.
SampleShape = torch.Size | tuple[int, ...]

__all__ = [
    "BernoulliParams",
    "SampleShape",
    "CategoricalParams",
    "as_float_tensor",
    "broadcast_to_batch",
    "check_num_samples",
    "check_temperature",
    "straight_through",
    "validation_enabled",
]


def validation_enabled(validate_args: bool | None) -> bool:
    """Whether a distribution built with ``validate_args`` will validate."""
    return Distribution._validate_args if validate_args is None else bool(validate_args)


def as_float_tensor(value: Tensor | float, like: Tensor | None = None) -> Tensor:
    """``value`` as a floating tensor; numbers take ``like``'s dtype and device if given."""
    if isinstance(value, Tensor):
        if like is not None:
            return value.to(dtype=like.dtype, device=like.device)
        return value if value.is_floating_point() else value.to(torch.get_default_dtype())
    if like is not None:
        return torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return torch.as_tensor(value, dtype=torch.get_default_dtype())


def check_temperature(temperature: Tensor | float, validate: bool = True) -> None:
    """Raise ``ValueError`` naming ``temperature`` unless it is positive.

    Numbers are always checked; tensors only when ``validate`` (a tensor check synchronises
    with an accelerator, which torch likewise only pays for under argument validation).
    """
    if isinstance(temperature, Tensor):
        if validate and not bool((temperature > 0).all()):
            raise ValueError(
                f"temperature must be positive, got a tensor of shape {tuple(temperature.shape)} "
                f"with minimum {temperature.detach().min().item()}"
            )
    elif not (isinstance(temperature, numbers.Real) and temperature > 0):
        raise ValueError(f"temperature must be positive, got {temperature!r}")


def check_num_samples(num_samples: int) -> int:
    """Raise ``ValueError`` naming ``num_samples`` unless it is a positive integer."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral):
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    return int(num_samples)


def broadcast_to_batch(
    name: str, value: Tensor, batch_shape: torch.Size, event_dims: int = 0
) -> torch.Size:
    """Broadcast shape of ``value``'s batch part with ``batch_shape``, or a ``ValueError``
    naming ``name``."""
    value_batch = value.shape[: value.dim() - event_dims]
    try:
        return torch.broadcast_shapes(value_batch, batch_shape)
    except RuntimeError as e:
        raise ValueError(
            f"{name} of batch shape {tuple(value_batch)} does not broadcast against the "
            f"batch shape {tuple(batch_shape)} of the other parameters"
        ) from e


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """``hard`` in the forward pass, the gradient of ``soft`` in the backward pass.

    ``hard + (soft - soft.detach())`` rather than ``hard + soft - soft.detach()``: the
    inner difference is exactly zero, whereas ``(hard + soft) - soft`` rounds and would turn
    an exact 1 into 0.99999994.
    """
    return hard + (soft - soft.detach())


class BernoulliParams(TorchDistribution):
    """Base for distributions parameterised like :class:`torch.distributions.Bernoulli`."""

    arg_constraints = {"logits": constraints.real, "probs": constraints.unit_interval}

    def _init_param(self, logits: Tensor | float | None, probs: Tensor | float | None) -> Tensor:
        if (logits is None) == (probs is None):
            raise ValueError("Either `logits` or `probs` must be specified, but not both.")
        if probs is not None:
            self.probs = as_float_tensor(probs)
            self._param = self.probs
        else:
            self.logits = as_float_tensor(logits)
            self._param = self.logits
        return self._param

    def _broadcast_param(self, batch_shape: torch.Size) -> None:
        if "probs" in self.__dict__:
            self.probs = self.probs.expand(batch_shape)
            self._param = self.probs
        else:
            self.logits = self.logits.expand(batch_shape)
            self._param = self.logits

    def _expand_param_into(self, new: BernoulliParams, batch_shape: torch.Size) -> None:
        if "probs" in self.__dict__:
            new.probs = self.probs.expand(batch_shape)
            new._param = new.probs
        if "logits" in self.__dict__:
            new.logits = self.logits.expand(batch_shape)
            new._param = new.logits

    @lazy_property
    def logits(self) -> Tensor:
        return probs_to_logits(self.probs, is_binary=True)

    @lazy_property
    def probs(self) -> Tensor:
        return logits_to_probs(self.logits, is_binary=True)

    @property
    def param_shape(self) -> torch.Size:
        return self._param.size()


class CategoricalParams(TorchDistribution):
    """Base for distributions parameterised like :class:`torch.distributions.Categorical`.

    ``logits`` are stored normalised (``logits.logsumexp(-1) == 0``), so that
    ``self.logits`` is :math:`\\log\\theta`.
    """

    arg_constraints = {
        "logits": constraints.independent(constraints.real, 1),
        "probs": constraints.simplex,
    }

    def _init_param(self, logits: Tensor | None, probs: Tensor | None) -> Tensor:
        if (logits is None) == (probs is None):
            raise ValueError("Either `logits` or `probs` must be specified, but not both.")
        param = as_float_tensor(probs if probs is not None else logits)
        name = "probs" if probs is not None else "logits"
        if param.dim() < 1:
            raise ValueError(f"{name} must have at least one dimension (the categories)")
        if probs is not None:
            self.probs = param / param.sum(-1, keepdim=True)
            self._param = self.probs
        else:
            self.logits = param - param.logsumexp(-1, keepdim=True)
            self._param = self.logits
        return self._param

    def _broadcast_param(self, batch_shape: torch.Size) -> None:
        shape = batch_shape + self._param.shape[-1:]
        if "probs" in self.__dict__:
            self.probs = self.probs.expand(shape)
            self._param = self.probs
        else:
            self.logits = self.logits.expand(shape)
            self._param = self.logits

    def _expand_param_into(self, new: CategoricalParams, batch_shape: torch.Size) -> None:
        shape = batch_shape + self._param.shape[-1:]
        if "probs" in self.__dict__:
            new.probs = self.probs.expand(shape)
            new._param = new.probs
        if "logits" in self.__dict__:
            new.logits = self.logits.expand(shape)
            new._param = new.logits

    @lazy_property
    def logits(self) -> Tensor:
        return probs_to_logits(self.probs)

    @lazy_property
    def probs(self) -> Tensor:
        return logits_to_probs(self.logits)

    @property
    def param_shape(self) -> torch.Size:
        return self._param.size()

    @property
    def num_categories(self) -> int:
        return self._param.shape[-1]
