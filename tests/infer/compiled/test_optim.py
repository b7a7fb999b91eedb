"""TensorOptimizer applies the same update as the torch / Pyro optimizer it stands for."""

from __future__ import annotations

import pyro
import pytest
import torch

from pyro_discrete.infer.compiled.optim import TensorOptimizer
from pyro_discrete.optim import MultiTensorAdam

OPTIMIZERS = {
    "adam": lambda: pyro.optim.Adam({"lr": 0.1, "betas": (0.8, 0.95)}),
    "adam_amsgrad_wd": lambda: pyro.optim.Adam({"lr": 0.1, "amsgrad": True, "weight_decay": 0.1}),
    "adamw": lambda: pyro.optim.AdamW({"lr": 0.1, "weight_decay": 0.5}),
    "clipped_adam": lambda: pyro.optim.ClippedAdam({"lr": 0.1, "clip_norm": 0.5, "lrd": 0.9}),
    "sgd_nesterov": lambda: pyro.optim.SGD({"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    "sgd_clip_args": lambda: pyro.optim.SGD({"lr": 0.1}, {"clip_norm": 0.3}),
    "multi_tensor_adam": lambda: MultiTensorAdam({"lr": 0.1}),
}


def _grads(step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return [torch.randn(3, generator=g), torch.randn(2, 2, generator=g)]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_tensor_updates_match_the_optimizer(name):
    init = [torch.tensor([0.5, -1.0, 2.0]), torch.tensor([[0.1, 0.2], [0.3, -0.4]])]
    trajectories = []
    for use_tensor_rule in (False, True):
        pyro.clear_param_store()
        params = [pyro.param(f"p{i}", v.clone()).unconstrained() for i, v in enumerate(init)]
        optim = OPTIMIZERS[name]()
        tensor_optim = TensorOptimizer(optim)
        for step in range(4):
            grads = _grads(step)
            if use_tensor_rule:  # in CompiledSVI.step's order
                tensor_optim.begin_step()
                for p in params:
                    tensor_optim.slot(p)
                with torch.no_grad():
                    tensor_optim.update(params, grads)
            else:
                for p, g in zip(params, grads, strict=True):
                    p.grad = g.clone()
                optim(params)
        assert tensor_optim.traceable
        trajectories.append([p.detach().clone() for p in params])
    for eager, tensor in zip(*trajectories, strict=True):
        assert torch.allclose(eager, tensor, rtol=1e-5, atol=1e-6), (eager, tensor)
    assert not torch.equal(trajectories[1][0], init[0])


def test_learning_rate_schedules_reach_the_tensor_rule():
    pyro.clear_param_store()
    p = pyro.param("p", torch.tensor([1.0])).unconstrained()
    optim = pyro.optim.SGD({"lr": 0.1})
    tensor_optim = TensorOptimizer(optim)
    tensor_optim.slot(p)
    lr = tensor_optim.begin_step()
    optim.optim_objs[p].param_groups[0]["lr"] = 0.5  # what a scheduler does
    same = tensor_optim.begin_step()
    assert same is lr and same.item() == pytest.approx(0.5)  # updated in place


def test_unsupported_optimizer_steps_eagerly():
    pyro.clear_param_store()
    p = pyro.param("p", torch.tensor([1.0])).unconstrained()
    optim = pyro.optim.Adagrad({"lr": 0.1})
    tensor_optim = TensorOptimizer(optim)
    tensor_optim.slot(p)
    assert not tensor_optim.traceable
    tensor_optim.eager_update([p], [torch.tensor([2.0])])
    assert p.item() == pytest.approx(0.9) and p.grad is None
