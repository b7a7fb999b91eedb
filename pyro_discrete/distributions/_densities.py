"""Standard log-densities of the noise variables (location 0, scale 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gumbel_log_density", "logistic_log_density"]


def logistic_log_density(x: Tensor) -> Tensor:
    r"""Standard logistic log-density :math:`-x - 2\log(1 + e^{-x})`.

    Written in :math:`|x|` (the density is symmetric) so that neither tail overflows.
    """
    a = x.abs()
    return -a - 2 * F.softplus(-a)


def gumbel_log_density(x: Tensor) -> Tensor:
    r"""Standard Gumbel log-density :math:`-x - e^{-x}`."""
    return -x - torch.exp(-x)
