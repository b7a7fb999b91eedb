"""DiscreteSVIModule and fit on one process: set-up, optimizer, checkpoints, errors."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.utils.data import TensorDataset

from pyro_discrete.infer import DiscreteELBO
from pyro_discrete.lightning import CHECKPOINT_KEY, DiscreteSVIModule, batch_arguments, fit
from pyro_discrete.models import SigmoidBeliefNet

DATA = torch.bernoulli(torch.full((64, 6), 0.2), generator=torch.Generator().manual_seed(0))


def test_batch_arguments():
    x, y = torch.zeros(2), torch.ones(2)
    assert batch_arguments(x) == ((x,), {})
    assert batch_arguments([x, y]) == ((x, y), {})
    assert batch_arguments({"x": x}) == ((), {"x": x})
    with pytest.raises(TypeError, match="batch_to_args"):
        batch_arguments("not a batch")


def test_bad_options_are_refused():
    net = SigmoidBeliefNet(6, (2,))
    with pytest.raises(ValueError, match="sync_every"):
        DiscreteSVIModule(net.model, net.guide, DiscreteELBO(), sync_every=0)
    with pytest.raises(ValueError, match="positive"):
        DiscreteSVIModule(net.model, net.guide, DiscreteELBO(), lr=0.0)
    module = DiscreteSVIModule(net.model, net.guide, DiscreteELBO())
    with pytest.raises(ValueError, match="example_batch"):
        module.initialize()


def test_module_local_params_are_refused():
    net = SigmoidBeliefNet(6, (2,))
    module = DiscreteSVIModule(net.model, net.guide, DiscreteELBO(), (DATA[:4],))
    with pyro.settings.context(module_local_params=True):
        with pytest.raises(ValueError, match="module_local_params"):
            module.initialize()


def test_initialize_registers_every_trained_tensor_and_groups_them():
    net = SigmoidBeliefNet(6, (2,), name="sbn")
    loss = DiscreteELBO("rebar", max_plate_nesting=1)
    module = DiscreteSVIModule(net.model, net.guide, loss, (DATA[:4],), lr=0.01)
    module.initialize()
    names = set(module.params.names)
    assert {"pyro_discrete/rebar/z1/eta", "pyro_discrete/rebar/z1/log_temperature"} <= names
    assert {f"sbn_decoder$$${n}" for n, _ in net.decoder.named_parameters()} <= names
    # every trained tensor is a parameter of the module (what DDP and the optimizer see)
    assert {id(p) for p in module.parameters()} == {
        id(p) for n, p in pyro.get_param_store().named_parameters() if n in names
    }
    groups = module.configure_optimizers().param_groups
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("model_and_guide", 0.01),
        ("control_variates", 0.1),
    ]
    assert len(groups[1]["params"]) == 2


def test_fit_trains_the_param_store_and_checkpoints_it(tmp_path):
    torch.manual_seed(0)
    net = SigmoidBeliefNet(6, (2,), name="sbn")
    before = net.decoder.prior_logits.detach().clone()
    trainer, module = fit(
        net.model,
        net.guide,
        DiscreteELBO("nvil", max_plate_nesting=1, hidden=(4,)),
        TensorDataset(DATA),
        max_steps=6,
        batch_size=8,
        lr=0.05,
        root_dir=tmp_path,
        checkpoint_every=3,
    )
    assert trainer.global_step == 6
    # the model's own tensors were trained: they are the store's
    assert module.params.parameter("sbn_decoder$$$prior_logits") is net.decoder.prior_logits
    assert not torch.equal(net.decoder.prior_logits, before)
    checkpoint = torch.load(tmp_path / "checkpoints" / "step=3.ckpt", weights_only=True)
    state = checkpoint[CHECKPOINT_KEY]
    assert state["trained"] == module.params.names
    assert set(state["param_store"]["params"]) >= set(module.params.names)
    assert state["param_store"]["running_statistics"] == [
        "pyro_discrete/nvil/z1/mean",
        "pyro_discrete/nvil/z1/variance",
    ]
    with pytest.raises(ValueError, match="not written by DiscreteSVIModule"):
        module.on_load_checkpoint({"state_dict": {}})
    state["trained"] = [*state["trained"], "pyro_discrete/rebar/z1/eta"]
    with pytest.raises(ValueError, match=r"\['pyro_discrete/rebar/z1/eta'\], which this model"):
        module.on_load_checkpoint(checkpoint)


def test_a_parameter_created_after_the_warm_up_stops_training():
    calls = [0]

    def late_guide(x):
        calls[0] += 1
        with pyro.plate("data", len(x)):
            logits = pyro.param("logits", torch.zeros(2))
            if calls[0] > 2:
                logits = logits + pyro.param("late", torch.zeros(2))
            pyro.sample("z", dist.Bernoulli(logits=logits).to_event(1))

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(logits=torch.zeros(2)).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    with pytest.raises(RuntimeError, match=r"\['late'\] appeared .* after the warm-up"):
        fit(model, late_guide, DiscreteELBO(), TensorDataset(DATA), max_steps=3, batch_size=8)
