"""Distributions for gradient estimation through discrete latent variables.

- :class:`LogisticBernoulli`, :class:`GumbelCategorical`: the reparameterised continuous
  variables whose threshold / argmax is a Bernoulli / categorical sample.
- :class:`ConditionalLogisticBernoulli`, :class:`ConditionalGumbelCategorical`: the same
  variables conditioned on their discrete value (REBAR, RELAX, Gumbel-Rao).
- :class:`StraightThroughBernoulli`, :class:`StraightThroughOneHotCategorical`,
  :class:`GumbelRaoBernoulli`, :class:`GumbelRaoOneHotCategorical`: hard samples with a
  relaxed gradient.
- :class:`ReinMaxBernoulli`, :class:`ReinMaxOneHotCategorical`: hard samples with ReinMax's
  second-order straight-through gradient (biased).
- :class:`DecoupledStraightThroughBernoulli`, :class:`DecoupledStraightThroughOneHotCategorical`:
  straight-through with separate forward (sampling) and backward temperatures (biased).
- :class:`ReinMaxRaoBernoulli`, :class:`ReinMaxRaoOneHotCategorical`: ReinMax with a
  Rao-Blackwellised Heun midpoint (our construction; biased).

Each of these is one law (Bernoulli / one-hot) and one gradient rule; see
:mod:`pyro_discrete.distributions.straight_through`.

The math lives in :mod:`pyro_discrete.distributions.functional`.
"""

from . import functional
from .conditional import ConditionalGumbelCategorical, ConditionalLogisticBernoulli
from .relaxed import GumbelCategorical, LogisticBernoulli
from .straight_through import (
    DecoupledStraightThroughBernoulli,
    DecoupledStraightThroughOneHotCategorical,
    GumbelRaoBernoulli,
    GumbelRaoOneHotCategorical,
    ReinMaxBernoulli,
    ReinMaxOneHotCategorical,
    ReinMaxRaoBernoulli,
    ReinMaxRaoOneHotCategorical,
    StraightThroughBernoulli,
    StraightThroughOneHotCategorical,
)

__all__ = [
    "ConditionalGumbelCategorical",
    "ConditionalLogisticBernoulli",
    "DecoupledStraightThroughBernoulli",
    "DecoupledStraightThroughOneHotCategorical",
    "GumbelCategorical",
    "GumbelRaoBernoulli",
    "GumbelRaoOneHotCategorical",
    "LogisticBernoulli",
    "ReinMaxBernoulli",
    "ReinMaxOneHotCategorical",
    "ReinMaxRaoBernoulli",
    "ReinMaxRaoOneHotCategorical",
    "StraightThroughBernoulli",
    "StraightThroughOneHotCategorical",
    "functional",
]
