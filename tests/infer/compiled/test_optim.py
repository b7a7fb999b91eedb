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


# ---------------------------------------------------------------------------------------
# The fused update and the finiteness gate of a replayed step
# ---------------------------------------------------------------------------------------


def _adam_slots(amsgrad: bool):
    pyro.clear_param_store()
    w = torch.tensor([[0.5, -1.0, 2.0], [0.1, 0.2, 0.3]])
    params = [pyro.param("w", w).unconstrained(), pyro.param("b", torch.zeros(3)).unconstrained()]
    tensor_optim = TensorOptimizer(pyro.optim.Adam({"lr": 0.1, "amsgrad": amsgrad}))
    for p in params:
        tensor_optim.slot(p)
    return params, tensor_optim


@pytest.mark.parametrize("amsgrad", [False, True])
def test_a_step_that_is_not_finite_leaves_parameters_and_adam_state_alone(amsgrad):
    params, tensor_optim = _adam_slots(amsgrad)
    good = [torch.ones(2, 3), torch.full((3,), -0.5)]
    with torch.no_grad():
        tensor_optim.update(params, good, torch.tensor(True))
    state = [tensor_optim.slot(p).state for p in params]
    before = [p.clone() for p in params] + [t.clone() for s in state for t in s.values()]
    bad = [torch.full((2, 3), float("nan")), torch.full((3,), float("inf"))]
    with torch.no_grad():
        gated = tensor_optim.update(params, bad, torch.tensor(False))
    after = list(params) + [t for s in state for t in s.values()]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert {id(t) for t in after} <= gated  # the caller need not copy them
    assert all(s["step"].item() == 1 for s in state)
    with torch.no_grad():  # and the next finite step is Adam's second step
        tensor_optim.update(params, good, torch.tensor(True))
    assert all(s["step"].item() == 2 for s in state)
    assert not torch.equal(params[0], before[0])


def test_non_contiguous_gradient_takes_the_per_tensor_rule_with_the_same_result():
    trajectories = []
    for contiguous in (True, False):
        params, tensor_optim = _adam_slots(False)
        for step in range(3):
            w_grad = torch.tensor([[0.3, -0.2], [0.1, 0.5], [0.0, 0.7]]) * (step - 0.5)
            w_grad = w_grad.t().contiguous() if contiguous else w_grad.t()
            grads = [w_grad, torch.full((3,), 0.1 * step)]
            with torch.no_grad():
                gated = tensor_optim.update(params, grads, torch.tensor(True))
            assert (id(params[0]) in gated) == contiguous
        trajectories.append([p.detach().clone() for p in params])
    for fused, per_tensor in zip(*trajectories, strict=True):
        assert torch.allclose(fused, per_tensor, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("grads", "finite"),
    [
        ([torch.full((4,), 3e38), torch.full((2,), 3e38)], True),  # a float32 sum overflows
        ([torch.zeros(4), torch.tensor([1.0, float("nan")])], False),
        ([torch.tensor([float("-inf"), 0.0]), torch.zeros(2)], False),
        ([torch.zeros(4), None, torch.zeros(0)], True),
    ],
)
def test_finite_flag(grads, finite):
    from pyro_discrete.infer.compiled.svi import finite_flag

    assert finite_flag(torch.tensor(1.5), grads).item() is finite
    assert finite_flag(torch.tensor(float("nan")), grads).item() is False


def test_replayed_adam_step_makes_no_copies_and_a_refused_step_keeps_optimizer_state():
    import pyro.distributions as dist

    from pyro_discrete.infer import CompiledSVI, DiscreteELBO, NonFiniteLossError

    def model(x):
        loc = pyro.param("loc", torch.tensor(0.5))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(logits=torch.zeros(len(x))))
            pyro.sample("x", dist.Normal(loc + 2.0 * z, 1.0), obs=x)

    def guide(x):
        logit = pyro.param("logit", torch.tensor(0.2))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(logits=logit.expand(len(x))))

    pyro.clear_param_store()
    x = torch.tensor([1.0, 2.5, -0.5, 3.0])
    optim = pyro.optim.Adam({"lr": 0.05})
    svi = CompiledSVI(model, guide, optim, DiscreteELBO(), backend="trace")
    for _ in range(4):
        svi.step(x)
    (program,) = svi.programs.values()
    targets = [str(n.target) for n in program.graph_module.graph.nodes]
    # REINFORCE keeps no running statistics: the fused update gates everything it writes
    assert not [t for t in targets if "clone" in t or "where" in t], targets
    # one fused update per torch param group (pyro.optim.Adam: one per parameter)
    assert sum("_fused_adam_" in t for t in targets) == 2
    state = optim.get_state()
    before = {k: {s: v.clone() for s, v in st["state"][0].items()} for k, st in state.items()}
    with pytest.raises(NonFiniteLossError):
        svi.step(torch.tensor([1.0, float("nan"), 0.0, 0.0]))
    after = optim.get_state()
    for name, saved in before.items():
        for key, value in saved.items():
            assert torch.equal(after[name]["state"][0][key], value), (name, key)
