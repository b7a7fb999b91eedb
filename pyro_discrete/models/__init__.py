"""Discrete-latent model/guide pairs: sigmoid belief nets, a categorical VAE, a mixture of experts.

Every model is a :class:`torch.nn.Module` with ``model(...)`` and ``guide(...)`` methods for
:class:`pyro.infer.SVI`. :data:`MODELS` maps the names used on the command line to
constructors; :func:`make_model` builds one by name.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .categorical_vae import CategoricalDecoder, CategoricalVAE, categorical_vae
from .mixture_of_experts import (
    EnumeratedMixtureOfExperts,
    MixtureOfExperts,
    MoEData,
    mixture_of_experts,
    synthetic_moe_data,
)
from .sbn import SBNDecoder, SigmoidBeliefNet, sbn_linear1, sbn_linear2, sbn_nonlinear

__all__ = [
    "MODELS",
    "CategoricalDecoder",
    "CategoricalVAE",
    "EnumeratedMixtureOfExperts",
    "MixtureOfExperts",
    "MoEData",
    "SBNDecoder",
    "SigmoidBeliefNet",
    "UnknownModelError",
    "categorical_vae",
    "make_model",
    "mixture_of_experts",
    "sbn_linear1",
    "sbn_linear2",
    "sbn_nonlinear",
    "synthetic_moe_data",
]


class UnknownModelError(KeyError, ValueError):
    """A model name that is not in :data:`MODELS`; the message lists the valid names."""

    def __str__(self) -> str:
        # KeyError would print the repr of its argument, quotes and escaped newlines included
        return str(self.args[0])


class _Registry(dict):
    def __missing__(self, name: str):
        raise UnknownModelError(f"unknown model {name!r}; valid names: {', '.join(sorted(self))}")


MODELS: dict[str, Callable[..., nn.Module]] = _Registry(
    sbn_linear1=sbn_linear1,
    sbn_linear2=sbn_linear2,
    sbn_nonlinear=sbn_nonlinear,
    categorical_vae=categorical_vae,
    mixture_of_experts=mixture_of_experts,
)


def make_model(name: str, **kwargs) -> nn.Module:
    """Build the model registered as ``name`` with constructor arguments ``kwargs``.

    :raises UnknownModelError: (a :class:`KeyError` and :class:`ValueError`) naming the valid
        model names.

    Example::

        >>> make_model("sbn_linear1").latent_dims
        (200,)
        >>> make_model("sbn_linear3")
        Traceback (most recent call last):
        ...
        pyro_discrete.models.UnknownModelError: unknown model 'sbn_linear3'; valid names: ...
    """
    return MODELS[name](**kwargs)
