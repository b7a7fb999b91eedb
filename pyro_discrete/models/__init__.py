"""Discrete-latent model/guide pairs: sigmoid belief nets, a categorical VAE, a mixture of experts.

Every model is a :class:`torch.nn.Module` with ``model(...)`` and ``guide(...)`` methods for
:class:`pyro.infer.SVI`. :data:`MODELS` maps the names used on the command line to
constructors; :func:`make_model` builds one by name.

:data:`MODEL_SPECS` is the registry the command line, its report and its ``--data`` option
read: one :class:`ModelSpec` per model, saying how to build it, which data sets it is trained
on and how the report names it. Adding a model is one module here and one line in
:data:`MODEL_SPECS` (``docs/extending.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
    "IMAGE_DATA",
    "MODELS",
    "MODEL_SPECS",
    "ModelSpec",
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


#: the binarised image data sets of the command line (``--data``); the first is the default
IMAGE_DATA = ("mnist", "fashion_mnist")


@dataclass(frozen=True)
class ModelSpec:
    """A model as the command line knows it.

    :param name: the ``--model`` name.
    :param build: the constructor; the command line passes the data's keyword arguments
        (``x_mean`` for image data, ``input_dim``/``output_dim`` for ``synthetic_moe``).
    :param data: the ``--data`` names it trains on (see
        :data:`pyro_discrete.cli.tasks.DATA_SOURCES`); the first is the default.
    :param report_name: what the comparison report calls it.
    :param latent_kinds: the kinds of its guide's sampled sites, as
        :func:`pyro_discrete.infer.sites.describe` names them (``"bernoulli"``,
        ``"one_hot"``, ``"categorical"``, ``"other"``): the command line offers only the
        estimators that handle each of them. Empty: not declared, every estimator is
        offered (and one that cannot handle a site is refused at the first step).
    """

    name: str
    build: Callable[..., nn.Module]
    data: tuple[str, ...]
    report_name: str
    latent_kinds: tuple[str, ...] = ()

    @property
    def default_data(self) -> str:
        return self.data[0]


class _Registry(dict):
    def __missing__(self, name: str):
        raise UnknownModelError(f"unknown model {name!r}; valid names: {', '.join(sorted(self))}")


#: every model of the command line, by ``--model`` name
MODEL_SPECS: dict[str, ModelSpec] = _Registry(
    (spec.name, spec)
    for spec in (
        ModelSpec(
            "sbn_linear1",
            sbn_linear1,
            IMAGE_DATA,
            "linear one-layer sigmoid belief net",
            ("bernoulli",),
        ),
        ModelSpec(
            "sbn_linear2",
            sbn_linear2,
            IMAGE_DATA,
            "linear two-layer sigmoid belief net",
            ("bernoulli",),
        ),
        ModelSpec(
            "sbn_nonlinear",
            sbn_nonlinear,
            IMAGE_DATA,
            "nonlinear sigmoid belief net",
            ("bernoulli",),
        ),
        ModelSpec(
            "categorical_vae", categorical_vae, IMAGE_DATA, "categorical VAE", ("one_hot",)
        ),
        ModelSpec(
            "mixture_of_experts",
            mixture_of_experts,
            ("synthetic_moe",),
            "mixture of experts",
            ("one_hot",),
        ),
    )
)

#: the constructors of :data:`MODEL_SPECS`, by name
MODELS: dict[str, Callable[..., nn.Module]] = _Registry(
    (name, spec.build) for name, spec in MODEL_SPECS.items()
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
