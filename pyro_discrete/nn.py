"""Small network builders shared by the models and the control variates."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["mlp", "output_bias_from_mean", "pixel_means"]


def mlp(
    in_dim: int, hidden: Sequence[int], out_dim: int, activation: type[nn.Module] = nn.Tanh
) -> nn.Sequential:
    """``Linear`` layers of the given widths with ``activation`` between them (none at the end).

    With ``hidden=()`` this is a single affine map, the "linear" layer of the belief nets.

    >>> mlp(4, (8,), 1, nn.ReLU)
    Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=1, bias=True)
    )
    """
    dims = [in_dim, *hidden, out_dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def pixel_means(x_mean: torch.Tensor | None, x_dim: int) -> torch.Tensor:
    r"""The training pixel means :math:`\bar x` a model centres its input with: ``x_mean``
    checked against ``x_dim``, or 0.5 everywhere (no centring) when not given."""
    if x_mean is None:
        return torch.full((x_dim,), 0.5)
    if x_mean.shape != (x_dim,):
        raise ValueError(f"x_mean must have shape ({x_dim},), got {tuple(x_mean.shape)}")
    return x_mean.detach().clone().float()


def output_bias_from_mean(x_mean: torch.Tensor, eps: float = 0.001) -> torch.Tensor:
    r""":math:`\mathrm{logit}(\mathrm{clip}(\bar x, \epsilon, 1 - \epsilon))`.

    Starting the decoder's output bias here makes the untrained model predict the pixel
    marginals, so early gradients are spent on structure rather than on the mean image.
    """
    return torch.logit(x_mean.clamp(eps, 1 - eps))
