r"""A VAE with a vector of one-hot categorical latents (the Gumbel-softmax paper's model).

.. math::

    p(z) = \prod_{j=1}^{J} \mathrm{OneHotCategorical}(z_j; \mathrm{softmax}(c_j)), \quad
    p(x \mid z) = \mathrm{Bernoulli}(\sigma(g(\mathrm{vec}(z)))), \quad
    q(z \mid x) = \prod_j \mathrm{OneHotCategorical}(z_j; \mathrm{softmax}(f(x - \bar x)_j)).

The decoder reads the one-hot vectors through a matrix product of :math:`\mathrm{vec}(z)`, so
it is a differentiable function of :math:`z` and can be evaluated at relaxed (softmax) values.

**References**

[1] E. Jang, S. Gu, B. Poole (2017), "Categorical Reparameterization with Gumbel-Softmax".
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_discrete.nn import mlp, output_bias_from_mean, pixel_means

__all__ = ["CategoricalVAE", "categorical_vae"]


class CategoricalVAE(nn.Module):
    r"""VAE with ``num_latents`` one-hot categorical latents of ``num_classes`` classes.

    One latent site ``"z1"`` with ``event_shape == (num_latents, num_classes)``; observation
    ``"x"``; data in ``pyro.plate("data", x.shape[0])``.

    :param int x_dim: number of pixels.
    :param int num_latents: number of categorical variables :math:`J`.
    :param int num_classes: classes per variable.
    :param hidden: widths of the ReLU layers of the encoder; the decoder mirrors them.
    :param x_mean: training pixel means :math:`\bar x` (default 0.5 everywhere).
    :param bool learn_prior: learn the prior logits :math:`c` (initialised at 0, i.e. uniform);
        otherwise the prior stays uniform, as in the Gumbel-softmax paper.
    :param str name: prefix of the parameter names in Pyro's param store.

    Example::

        >>> vae = CategoricalVAE(x_dim=6, num_latents=2, num_classes=3, hidden=(4,))
        >>> trace = pyro.poutine.trace(vae.guide).get_trace(torch.zeros(5, 6))
        >>> tuple(trace.nodes["z1"]["value"].shape)
        (5, 2, 3)
        >>> pyro.clear_param_store()
    """

    def __init__(
        self,
        x_dim: int = 784,
        num_latents: int = 20,
        num_classes: int = 10,
        hidden: Sequence[int] = (512, 256),
        x_mean: torch.Tensor | None = None,
        learn_prior: bool = False,
        name: str = "categorical_vae",
    ) -> None:
        super().__init__()
        self.x_dim, self.num_latents, self.num_classes = x_dim, num_latents, num_classes
        self.name = name
        self.register_buffer("x_mean", pixel_means(x_mean, x_dim))
        latent_size = num_latents * num_classes
        self.encoder = mlp(x_dim, tuple(hidden), latent_size, activation=nn.ReLU)
        self.decoder = CategoricalDecoder(
            mlp(latent_size, tuple(reversed(hidden)), x_dim, activation=nn.ReLU),
            torch.zeros(num_latents, num_classes),
            learn_prior,
        )
        with torch.no_grad():
            self.decoder.net[-1].bias.copy_(output_bias_from_mean(self.x_mean))

    def model(self, x: torch.Tensor) -> None:
        pyro.module(f"{self.name}_decoder", self.decoder)
        prior = self.decoder.prior_logits
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z1", dist.OneHotCategorical(logits=prior).to_event(1))
            logits = self.decoder.net(z.flatten(-2))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module(f"{self.name}_encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            logits = self.encoder(x - self.x_mean)
            logits = logits.unflatten(-1, (self.num_latents, self.num_classes))
            pyro.sample("z1", dist.OneHotCategorical(logits=logits).to_event(1))


class CategoricalDecoder(nn.Module):
    """Decoder network and prior logits (a parameter or a fixed buffer) of a CategoricalVAE."""

    def __init__(self, net: nn.Module, prior_logits: torch.Tensor, learn_prior: bool) -> None:
        super().__init__()
        self.net = net
        if learn_prior:
            self.prior_logits = nn.Parameter(prior_logits)
        else:
            self.register_buffer("prior_logits", prior_logits)


def categorical_vae(x_mean: torch.Tensor | None = None, x_dim: int = 784) -> CategoricalVAE:
    """20 one-hot categoricals of 10 classes, encoder 784-512-256 ReLU, mirrored decoder."""
    return CategoricalVAE(x_dim, 20, 10, (512, 256), x_mean)
