r"""Sigmoid belief net VAEs of the REBAR / RELAX discrete-VAE protocol.

Generative model with :math:`L` layers of binary latents (:math:`b_L` on top)

.. math::

    p(b_L) = \mathrm{Bernoulli}(\sigma(c)), \quad
    p(b_{l-1} \mid b_l) = \mathrm{Bernoulli}(\sigma(g_l(2 b_l - 1))), \quad
    p(x \mid b_1) = \mathrm{Bernoulli}(\sigma(g_1(2 b_1 - 1))),

and inference network :math:`q(b_1 \mid x) = \mathrm{Bernoulli}(\sigma(f_1(x - \bar x)))`,
:math:`q(b_l \mid b_{l-1}) = \mathrm{Bernoulli}(\sigma(f_l(2 b_{l-1} - 1)))`, where every
:math:`f_l, g_l` is affine ("linear" models) or an MLP with two 200-unit tanh layers
("nonlinear"). The prior logits :math:`c` start at 0 and the output bias of :math:`g_1`
starts at :math:`\mathrm{logit}(\mathrm{clip}(\bar x, 0.001, 0.999))`.

Latents enter the networks only through ``2 * b - 1`` and matrix products, so ``model`` and
``guide`` are differentiable functions of the latent values: REBAR and RELAX replay them at
relaxed values in :math:`[0, 1]`.

**References**

[1] G. Tucker, A. Mnih, C. Maddison, D. Lawson, J. Sohl-Dickstein (2017),
    "REBAR: Low-variance, unbiased gradient estimates for discrete latent variable models".
[2] W. Grathwohl, D. Choi, Y. Wu, G. Roeder, D. Duvenaud (2018),
    "Backpropagation through the Void: Optimizing control variates for black-box gradient
    estimation".
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_discrete.nn import mlp, output_bias_from_mean, pixel_means

__all__ = ["SigmoidBeliefNet", "sbn_linear1", "sbn_linear2", "sbn_nonlinear"]


class SigmoidBeliefNet(nn.Module):
    r"""A sigmoid belief net VAE: model and guide as methods of one :class:`torch.nn.Module`.

    Latent sites are named ``"z1"`` (nearest the data) to ``"zL"``; the observation is
    ``"x"``; data points live in ``pyro.plate("data", x.shape[0])`` (dim ``-1``, so
    ``max_plate_nesting=1``). The networks are registered with :func:`pyro.module` as
    ``f"{name}_encoder"`` and ``f"{name}_decoder"``.

    :param int x_dim: number of pixels.
    :param latent_dims: width of each stochastic layer, bottom (``z1``) first.
    :param hidden: widths of the deterministic tanh layers inside every transition
        (``()`` for the linear models, ``(200, 200)`` for the nonlinear one).
    :param x_mean: training pixel means :math:`\bar x` (default: all 0.5, i.e. no centring
        and a zero output bias).
    :param str name: prefix of the parameter names in Pyro's param store.

    Example::

        >>> import pyro, torch
        >>> from pyro.infer import SVI, TraceGraph_ELBO
        >>> vae = SigmoidBeliefNet(x_dim=6, latent_dims=(3,))
        >>> x = torch.bernoulli(torch.full((5, 6), 0.3))
        >>> svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), TraceGraph_ELBO())
        >>> loss = svi.step(x)
        >>> pyro.clear_param_store()
    """

    def __init__(
        self,
        x_dim: int = 784,
        latent_dims: Sequence[int] = (200,),
        hidden: Sequence[int] = (),
        x_mean: torch.Tensor | None = None,
        name: str = "sbn",
    ) -> None:
        super().__init__()
        if not latent_dims:
            raise ValueError("a belief net needs at least one stochastic layer")
        self.x_dim = x_dim
        self.latent_dims = tuple(int(d) for d in latent_dims)
        self.hidden = tuple(int(h) for h in hidden)
        self.name = name
        self.register_buffer("x_mean", pixel_means(x_mean, x_dim))

        dims = (x_dim, *self.latent_dims)
        # encoder[l] maps layer l's input (x - x̄, or 2 b_l - 1) to the logits of b_{l+1}
        pairs = list(zip(dims[:-1], dims[1:], strict=True))
        self.encoder = nn.ModuleList(mlp(a, self.hidden, b) for a, b in pairs)
        self.decoder = SBNDecoder(dims, self.hidden)
        with torch.no_grad():
            self.decoder.layers[0][-1].bias.copy_(output_bias_from_mean(self.x_mean))

    @property
    def num_layers(self) -> int:
        return len(self.latent_dims)

    def model(self, x: torch.Tensor) -> None:
        """:math:`p(x, b_1, \\ldots, b_L)`, with ``x`` of shape ``(N, x_dim)`` observed."""
        pyro.module(f"{self.name}_decoder", self.decoder)
        layers = self.decoder.layers
        with pyro.plate("data", x.shape[0]):
            b = pyro.sample(
                f"z{self.num_layers}", dist.Bernoulli(logits=self.decoder.prior_logits).to_event(1)
            )
            for layer in range(self.num_layers - 1, 0, -1):
                logits = layers[layer](2 * b - 1)
                b = pyro.sample(f"z{layer}", dist.Bernoulli(logits=logits).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=layers[0](2 * b - 1)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """:math:`q(b_1, \\ldots, b_L \\mid x)`, factorised bottom-up."""
        pyro.module(f"{self.name}_encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            h = x - self.x_mean
            for layer in range(self.num_layers):
                b = pyro.sample(
                    f"z{layer + 1}", dist.Bernoulli(logits=self.encoder[layer](h)).to_event(1)
                )
                h = 2 * b - 1


class SBNDecoder(nn.Module):
    """The generative networks of a :class:`SigmoidBeliefNet` and its learned prior logits.

    ``layers[l]`` maps :math:`2 b_{l+1} - 1` to the logits of layer ``l`` (layer 0 is x).
    """

    def __init__(self, dims: Sequence[int], hidden: Sequence[int]) -> None:
        super().__init__()
        pairs = zip(dims[:-1], dims[1:], strict=True)
        self.layers = nn.ModuleList(mlp(b, hidden, a) for a, b in pairs)
        self.prior_logits = nn.Parameter(torch.zeros(dims[-1]))


def sbn_linear1(x_mean: torch.Tensor | None = None, x_dim: int = 784) -> SigmoidBeliefNet:
    """Linear one-layer belief net, 784-200."""
    return SigmoidBeliefNet(x_dim, (200,), (), x_mean, name="sbn_linear1")


def sbn_linear2(x_mean: torch.Tensor | None = None, x_dim: int = 784) -> SigmoidBeliefNet:
    """Linear two-layer belief net, 784-200-200."""
    return SigmoidBeliefNet(x_dim, (200, 200), (), x_mean, name="sbn_linear2")


def sbn_nonlinear(x_mean: torch.Tensor | None = None, x_dim: int = 784) -> SigmoidBeliefNet:
    """Nonlinear belief net: 784-200tanh-200tanh-200 Bernoulli, mirrored in the decoder."""
    return SigmoidBeliefNet(x_dim, (200,), (200, 200), x_mean, name="sbn_nonlinear")
