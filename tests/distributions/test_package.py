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
