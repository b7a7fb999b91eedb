"""The param store as nn.Parameters: warm-up, adoption, binding and checkpoint state."""

from __future__ import annotations

import io

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

from pyro_discrete.infer import DiscreteELBO
from pyro_discrete.infer.control_variates import running_statistics
from pyro_discrete.lightning import (
    ParamStoreParameters,
    load_param_store_state,
    param_store_state,
    warm_up,
)

X = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])


def model(x):
    prior = pyro.param("prior", torch.zeros(2))
    scale = pyro.param("scale", torch.ones(3), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Bernoulli(logits=prior).to_event(1))
        mean = z.sum(-1, keepdim=True) * scale
        pyro.sample("x", dist.Normal(mean, 1.0).to_event(1), obs=x)


def guide(x):
    weight = pyro.param("weight", torch.full((3, 2), 0.1))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Bernoulli(logits=x @ weight).to_event(1))


def test_warm_up_creates_control_variates_and_changes_nothing():
    loss = DiscreteELBO("nvil", max_plate_nesting=1, hidden=(4,))
    pyro.param("weight", torch.full((3, 2), 0.1))
    before = pyro.param("weight").detach().clone()
    trained = warm_up(loss, model, guide, (X,), {})
    assert {"prior", "scale", "weight"} <= set(trained)
    assert any(n.startswith("pyro_discrete/nvil/z/baseline$$$") for n in trained)
    assert trained == sorted(trained)
    assert torch.equal(pyro.param("weight"), before)
    for _, p in pyro.get_param_store().named_parameters():
        assert p.grad is None
    # the step's running mean and variance are gone: the first real step starts them anew
    assert running_statistics() == {}
    assert "pyro_discrete/nvil/z/mean" not in pyro.get_param_store()


def test_warm_up_restores_running_statistics_that_existed():
    loss = DiscreteELBO("nvil", max_plate_nesting=1, hidden=(4,))
    loss.differentiable_loss(model, guide, X)
    loss.differentiable_loss(model, guide, X)
    stats = {k: v.clone() for k, v in running_statistics().items()}
    assert stats["pyro_discrete/nvil/z/variance"] != 1.0  # moved off its initial value
    warm_up(loss, model, guide, (X,), {})
    assert {k: v.clone() for k, v in running_statistics().items()} == stats


def test_warm_up_leaves_the_temperature_schedule_at_step_zero():
    loss = DiscreteELBO("gumbel", max_plate_nesting=1, anneal_rate=0.1)
    warm_up(loss, model, guide, (X,), {})
    counter = "pyro_discrete/gumbel/schedule/step"
    assert counter not in pyro.get_param_store()
    loss.differentiable_loss(model, guide, X)
    assert pyro.get_param_store()[counter].item() == 1.0


def test_warm_up_leaves_out_parameters_without_gradient():
    def frozen_guide(x):
        pyro.param("frozen", torch.ones(()))  # registered, never used
        guide(x)

    trained = warm_up(DiscreteELBO("reinforce"), model, frozen_guide, (X,), {})
    assert "frozen" in pyro.get_param_store() and "frozen" not in trained


def test_warm_up_without_trained_parameters_says_so():
    def fixed_guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(logits=torch.zeros(len(x), 2)).to_event(1))

    def fixed_model(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(logits=torch.zeros(len(x), 2)).to_event(1))

    with pytest.raises(ValueError, match="pyro.module"):
        warm_up(DiscreteELBO("reinforce"), fixed_model, fixed_guide, (X,), {})


def test_adopted_parameters_are_the_stores_own_tensors():
    net = torch.nn.Sequential(torch.nn.Linear(3, 1))
    pyro.module("net", net)
    pyro.param("scale", torch.ones(3), constraint=constraints.positive)
    pyro.param("pyro_discrete/rebar/z/eta", torch.tensor(1.0))
    params = ParamStoreParameters()
    params.adopt(["net$$$0.weight", "scale", "pyro_discrete/rebar/z/eta"])
    assert params.names == ["net$$$0.weight", "scale", "pyro_discrete/rebar/z/eta"]
    assert params.parameter("net$$$0.weight") is net[0].weight  # a module's: kept as it is
    scale = params.parameter("scale")
    assert isinstance(scale, torch.nn.Parameter)
    assert pyro.param("scale").unconstrained() is scale
    with torch.no_grad():
        scale.add_(1.0)  # an optimizer step on the parameter is what Pyro reads
    torch.testing.assert_close(pyro.param("scale"), torch.full((3,), 1.0).exp())
    keys = set(params.state_dict())
    # "." is not allowed in attribute names: encoded, and decoded by .names
    assert "store_params.net$$$0%2Eweight" in keys
    groups = params.param_groups(lr=0.1, control_variate_lr=1.0)
    assert [(g["name"], g["lr"], len(g["params"])) for g in groups] == [
        ("model_and_guide", 0.1, 2),
        ("control_variates", 1.0, 1),
    ]
    assert groups[1]["params"][0] is params.parameter("pyro_discrete/rebar/z/eta")


def test_adopting_a_missing_parameter_names_it():
    with pytest.raises(KeyError, match="'nowhere'"):
        ParamStoreParameters().adopt(["nowhere"])


def test_bind_puts_parameters_back_with_their_constraints():
    pyro.param("scale", torch.full((2,), 2.0), constraint=constraints.positive)
    params = ParamStoreParameters()
    params.adopt(["scale"])
    pyro.clear_param_store()  # e.g. a spawned worker's empty store
    params.bind()
    assert pyro.param("scale").unconstrained() is params.parameter("scale")
    torch.testing.assert_close(pyro.param("scale"), torch.full((2,), 2.0))


def test_checkpoint_state_round_trip_is_in_place_and_weights_only():
    pyro.param("scale", torch.full((2,), 2.0), constraint=constraints.positive)
    pyro.get_param_store()["pyro_discrete/nvil/z/mean"] = torch.tensor(3.0)
    state = param_store_state()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    tensor = pyro.param("scale").unconstrained()
    with torch.no_grad():
        tensor.zero_()
    del pyro.get_param_store()["pyro_discrete/nvil/z/mean"]
    load_param_store_state(state, required=["scale"])
    assert pyro.param("scale").unconstrained() is tensor  # overwritten in place
    torch.testing.assert_close(pyro.param("scale"), torch.full((2,), 2.0))
    assert pyro.get_param_store()["pyro_discrete/nvil/z/mean"].item() == 3.0


def test_checkpoint_of_another_model_is_refused_with_the_parameter_name():
    pyro.param("weight", torch.zeros(3, 2))
    state = param_store_state()
    pyro.clear_param_store()
    pyro.param("weight", torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"'weight' has shape \(3, 2\)"):
        load_param_store_state(state)
    with pytest.raises(ValueError, match="no value for parameter.*'other'"):
        load_param_store_state(state, required=["weight", "other"])
    pyro.clear_param_store()
    pyro.param("scale", torch.ones(()), constraint=constraints.positive)
    state = param_store_state()
    pyro.clear_param_store()
    with pytest.raises(ValueError, match="'scale'.*not created by this model"):
        load_param_store_state(state)
