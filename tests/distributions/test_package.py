"""Public names, the functional re-export and the docstring examples."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

import pyro_discrete.distributions as dist

MODULES = ["relaxed", "conditional", "straight_through", "functional"]


def test_public_names():
    expected = {
        "LogisticBernoulli",
        "ConditionalLogisticBernoulli",
        "GumbelCategorical",
        "ConditionalGumbelCategorical",
        "StraightThroughBernoulli",
        "StraightThroughOneHotCategorical",
        "GumbelRaoBernoulli",
        "GumbelRaoOneHotCategorical",
        "functional",
    }
    assert expected <= set(dist.__all__)
    for name in expected:
        assert hasattr(dist, name)
    assert dist.functional is importlib.import_module("pyro_discrete.distributions.functional")
    for name in dist.functional.__all__:
        assert callable(getattr(dist.functional, name))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"pyro_discrete.distributions.{name}")
    torch.manual_seed(0)
    result = doctest.testmod(
        module, extraglobs={"torch": torch}, optionflags=doctest.NORMALIZE_WHITESPACE
    )
    assert result.failed == 0


def test_positional_parameters_follow_pyro_and_torch():
    """``temperature, probs=None, logits=None`` as Pyro's relaxed distributions, and
    ``probs, logits`` as torch's Bernoulli / OneHotCategorical: a positional second
    argument is a probability."""
    import inspect

    from pyro.distributions import RelaxedBernoulliStraightThrough

    import pyro_discrete.distributions as D

    pyro_order = list(inspect.signature(RelaxedBernoulliStraightThrough).parameters)[:3]
    for cls in (
        D.StraightThroughBernoulli,
        D.StraightThroughOneHotCategorical,
        D.GumbelRaoBernoulli,
        D.GumbelRaoOneHotCategorical,
    ):
        assert list(inspect.signature(cls).parameters)[:3] == pyro_order
    for cls in (D.LogisticBernoulli, D.GumbelCategorical):
        assert list(inspect.signature(cls).parameters)[:2] == ["probs", "logits"]
    d = D.StraightThroughBernoulli(0.5, torch.tensor(0.25))
    assert torch.allclose(d.probs, torch.tensor(0.25))
