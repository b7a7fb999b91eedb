import pyro
import pytest
import torch
from pyro.infer import TraceGraph_ELBO

from pyro_discrete.models import MODELS, UnknownModelError, make_model, synthetic_moe_data


def test_registry_names():
    assert set(MODELS) == {
        "sbn_linear1",
        "sbn_linear2",
        "sbn_nonlinear",
        "categorical_vae",
        "mixture_of_experts",
    }


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(UnknownModelError) as info:
        make_model("sbn_linear3")
    message = str(info.value)
    assert "unknown model 'sbn_linear3'" in message
    assert "sbn_linear1" in message and "mixture_of_experts" in message
    # catchable both ways, as a missing key and as a bad value
    with pytest.raises(KeyError):
        MODELS["nope"]
    with pytest.raises(ValueError):
        MODELS["nope"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_trains_one_step(name):
    pyro.clear_param_store()
    model = make_model(name)
    if name == "mixture_of_experts":
        data = synthetic_moe_data(num_points=8)
        args = (data.x, data.y)
    else:
        args = (torch.bernoulli(torch.full((3, 784), 0.2)),)
    elbo = TraceGraph_ELBO()
    loss = elbo.loss_and_grads(model.model, model.guide, *args)
    assert torch.isfinite(torch.tensor(loss))
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    pyro.clear_param_store()
