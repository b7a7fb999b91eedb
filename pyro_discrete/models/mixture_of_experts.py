r"""Mixture of experts with a discrete routing latent per data point.

.. math::

    p(z_n \mid x_n) = \mathrm{OneHotCategorical}(\mathrm{softmax}(g(x_n))), \quad
    p(y_n \mid x_n, z_n) = \mathcal{N}\Big(y_n;\ \sum_k z_{nk}\, \mu_k(x_n),\
        \sum_k z_{nk}\, \sigma_k\Big), \quad
    q(z_n \mid x_n, y_n) = \mathrm{OneHotCategorical}(\mathrm{softmax}(h(x_n, y_n))).

:math:`g` is the gate network, :math:`\mu_k` the experts (affine maps or small MLPs) and
:math:`h` the inference network. The expert is chosen by the one-hot weighting
``(z[..., None] * expert_out).sum(-2)``, so the model is differentiable in :math:`z`.

:class:`EnumeratedMixtureOfExperts` is the same model with a
:class:`~pyro.distributions.Categorical` index and ``infer={"enumerate": "parallel"}`` on
the guide site, for Pyro's exact :class:`~pyro.infer.TraceEnum_ELBO`; the two classes share
parameter names and layout, so a ``state_dict`` moves between them.

**References**

[1] R. Jacobs, M. Jordan, S. Nowlan, G. Hinton (1991), "Adaptive Mixtures of Local Experts".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex
from torch import nn

from pyro_discrete.nn import mlp

__all__ = [
    "EnumeratedMixtureOfExperts",
    "MixtureOfExperts",
    "MoEData",
    "mixture_of_experts",
    "synthetic_moe_data",
]


class _Generative(nn.Module):
    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        num_experts: int,
        expert_hidden: Sequence[int],
        gate_hidden: Sequence[int],
    ) -> None:
        super().__init__()
        self.gate = mlp(input_dim, gate_hidden, num_experts)
        # all experts in one module: a ModuleList of MLPs, or (when they are affine) a single
        # Linear whose output is split per expert, which is K times fewer kernel launches
        if expert_hidden:
            self.experts = nn.ModuleList(
                mlp(input_dim, expert_hidden, output_dim) for _ in range(num_experts)
            )
        else:
            self.experts = nn.Linear(input_dim, num_experts * output_dim)
        self.log_scale = nn.Parameter(torch.zeros(num_experts, output_dim))


class MixtureOfExperts(nn.Module):
    r"""Mixture of ``num_experts`` Gaussian experts routed by a one-hot latent ``"z1"``.

    ``model(x, y)`` and ``guide(x, y)`` take inputs ``x`` of shape ``(N, input_dim)`` and
    targets ``y`` of shape ``(N, output_dim)``; the observation site is ``"y"``.

    :param int input_dim: dimension of the inputs.
    :param int output_dim: dimension of the targets.
    :param int num_experts: number of experts :math:`K`.
    :param expert_hidden: tanh hidden widths of each expert (``()``: linear regressors).
    :param gate_hidden: tanh hidden widths of the gate network.
    :param guide_hidden: tanh hidden widths of the inference network on ``[x, y]``.
    :param str name: prefix of the parameter names in Pyro's param store.

    Example::

        >>> data = synthetic_moe_data(num_points=50, num_experts=3, seed=0)
        >>> moe = MixtureOfExperts(input_dim=2, num_experts=3)
        >>> tuple(moe.expert_outputs(data.x).shape)
        (50, 3, 1)
        >>> bool(moe.log_likelihood(data.x, data.y).isfinite().all())
        True
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int = 1,
        num_experts: int = 4,
        expert_hidden: Sequence[int] = (),
        gate_hidden: Sequence[int] = (),
        guide_hidden: Sequence[int] = (32,),
        name: str = "moe",
    ) -> None:
        super().__init__()
        if num_experts < 2:
            raise ValueError(f"a mixture needs at least two experts, got {num_experts}")
        self.input_dim, self.output_dim, self.num_experts = input_dim, output_dim, num_experts
        self.name = name
        self.generative = _Generative(
            input_dim, output_dim, num_experts, tuple(expert_hidden), tuple(gate_hidden)
        )
        self.posterior = mlp(input_dim + output_dim, tuple(guide_hidden), num_experts)

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert's prediction, shape ``(..., num_experts, output_dim)``."""
        experts = self.generative.experts
        if isinstance(experts, nn.Linear):
            return experts(x).unflatten(-1, (self.num_experts, self.output_dim))
        return torch.stack([e(x) for e in experts], dim=-2)

    def _route(self, onehot: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # a weighted sum rather than indexing keeps loc and scale differentiable in the one-hot
        loc = (onehot[..., None] * self.expert_outputs(x)).sum(-2)
        scale = (onehot[..., None] * self.generative.log_scale.exp()).sum(-2)
        return loc, scale

    def _check(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        if x.dim() != 2 or x.shape[-1] != self.input_dim:
            raise ValueError(f"x must have shape (N, {self.input_dim}), got {tuple(x.shape)}")
        if y is not None and (y.dim() != 2 or y.shape != (x.shape[0], self.output_dim)):
            raise ValueError(
                f"y must have shape ({x.shape[0]}, {self.output_dim}), got {tuple(y.shape)}"
            )

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        self._check(x, y)
        pyro.module(f"{self.name}_model", self.generative)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z1", dist.OneHotCategorical(logits=self.generative.gate(x)))
            loc, scale = self._route(z, x)
            pyro.sample("y", dist.Normal(loc, scale).to_event(1), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._check(x, y)
        pyro.module(f"{self.name}_guide", self.posterior)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z1", dist.OneHotCategorical(logits=self.posterior(torch.cat([x, y], -1))))

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""Exact log-likelihood of each data point under the mixture,

        .. math::

            \log p(y_n \mid x_n) = \log \sum_k \pi_k(x_n)\, \mathcal{N}(y_n; \mu_k(x_n), \sigma_k).

        Returns a tensor of shape ``(N,)``; used to score held-out data.
        """
        self._check(x, y)
        log_pi = self.generative.gate(x).log_softmax(-1)
        component = dist.Normal(self.expert_outputs(x), self.generative.log_scale.exp())
        return (log_pi + component.log_prob(y.unsqueeze(-2)).sum(-1)).logsumexp(-1)


class EnumeratedMixtureOfExperts(MixtureOfExperts):
    r""":class:`MixtureOfExperts` written for exact enumeration with
    :class:`~pyro.infer.TraceEnum_ELBO`.

    The latent ``"z1"`` is a :class:`~pyro.distributions.Categorical` index, enumerated in
    parallel in the guide, that selects the expert by indexing, so
    :math:`\mathbb{E}_q[\cdot]` is a sum over the :math:`K` experts with no sampling noise.
    Use ``TraceEnum_ELBO(max_plate_nesting=1)``.
    """

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        self._check(x, y)
        pyro.module(f"{self.name}_model", self.generative)
        with pyro.plate("data", x.shape[0]):
            k = pyro.sample("z1", dist.Categorical(logits=self.generative.gate(x)))
            # Indexing costs O(K N D) under enumeration, where the one-hot weighting of the
            # sampled model would build a (K, N, K, D) tensor; no gradient in k is needed here.
            loc = Vindex(self.expert_outputs(x))[..., k, :]
            scale = Vindex(self.generative.log_scale.exp())[k, :]
            pyro.sample("y", dist.Normal(loc, scale).to_event(1), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._check(x, y)
        pyro.module(f"{self.name}_guide", self.posterior)
        with pyro.plate("data", x.shape[0]):
            logits = self.posterior(torch.cat([x, y], -1))
            pyro.sample("z1", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})


class MoEData(NamedTuple):
    """Synthetic mixture-of-experts data: inputs, targets and the true expert of each point."""

    x: torch.Tensor
    y: torch.Tensor
    assignment: torch.Tensor


def synthetic_moe_data(
    num_points: int = 2000,
    num_experts: int = 4,
    input_dim: int = 2,
    output_dim: int = 1,
    noise: float = 0.1,
    gate_sharpness: float = 3.0,
    seed: int = 0,
) -> MoEData:
    r"""Draw data from a random mixture of linear experts with a softmax-linear gate.

    :math:`x_n \sim \mathcal{N}(0, I)`; expert :math:`k` owns the soft Voronoi cell of a
    random centre :math:`c_k \sim \mathcal{N}(0, I)`,
    :math:`z_n \sim \mathrm{Categorical}(\mathrm{softmax}_k(-s \lVert x_n - c_k \rVert^2))`
    (a linear gate in disguise: the :math:`\lVert x_n \rVert^2` term cancels in the softmax);
    :math:`y_n = A_{z_n} x_n + a_{z_n} + \epsilon`,
    :math:`\epsilon \sim \mathcal{N}(0, \mathrm{noise}^2)`. Larger ``gate_sharpness``
    :math:`s` makes the cells crisper.

    Example::

        >>> d = synthetic_moe_data(num_points=10, num_experts=3, seed=1)
        >>> tuple(d.x.shape), tuple(d.y.shape), int(d.assignment.max()) < 3
        ((10, 2), (10, 1), True)
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_points, input_dim, generator=g)
    centres = torch.randn(num_experts, input_dim, generator=g)
    probs = torch.softmax(-gate_sharpness * torch.cdist(x, centres).square(), -1)
    assignment = torch.multinomial(probs, 1, generator=g).squeeze(-1)
    slopes = 2 * torch.randn(num_experts, input_dim, output_dim, generator=g)
    offsets = 2 * torch.randn(num_experts, output_dim, generator=g)
    mean = torch.einsum("ni,nio->no", x, slopes[assignment]) + offsets[assignment]
    y = mean + noise * torch.randn(num_points, output_dim, generator=g)
    return MoEData(x, y, assignment)


def mixture_of_experts(
    input_dim: int = 2, output_dim: int = 1, num_experts: int = 4, **kwargs
) -> MixtureOfExperts:
    """Linear experts with a linear gate and a 32-unit tanh inference network."""
    return MixtureOfExperts(input_dim, output_dim, num_experts, **kwargs)
