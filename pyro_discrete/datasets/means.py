"""Statistics of the training splits, for any of the package's data sets."""

from __future__ import annotations

from typing import Literal

import torch

from .fashion_mnist import fashion_mnist
from .mnist import mnist_probabilities

__all__ = ["training_mean"]


def training_mean(data: Literal["mnist", "fashion_mnist"] = "mnist") -> torch.Tensor:
    r"""Pixel means :math:`\bar x` of a training split, shape ``(784,)``.

    This is the mean of the grey levels, i.e. the expected value of any binarisation of the
    training images. The REBAR/RELAX protocol centres the encoder input as
    :math:`x - \bar x` and initialises the decoder's output bias to
    :math:`\mathrm{logit}(\mathrm{clip}(\bar x, 0.001, 0.999))`.

    :param str data: ``"mnist"`` or ``"fashion_mnist"``.
    """
    if data == "mnist":
        return mnist_probabilities("train").mean(0)
    if data == "fashion_mnist":
        return fashion_mnist("train").mean(0)
    raise ValueError(f"unknown data set {data!r}; expected 'mnist' or 'fashion_mnist'")
