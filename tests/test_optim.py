"""MultiTensorAdam: same trajectory as Pyro's per-parameter Adam, one fused step."""

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_discrete.infer import DiscreteELBO, control_variate_lr
from pyro_discrete.optim import MultiTensorAdam


def _model(x):
    loc = pyro.param("loc", torch.zeros(3))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def _guide(x):
    pass


def _run(optim, steps=20):
    pyro.clear_param_store()
    x = torch.arange(12.0).reshape(4, 3)
    svi = SVI(_model, _guide, optim, Trace_ELBO())
    for _ in range(steps):
        svi.step(x)
    return pyro.param("loc").detach().clone()


def test_matches_pyro_adam():
    expected = _run(Adam({"lr": 0.1}))
    got = _run(MultiTensorAdam({"lr": 0.1}))
    assert torch.allclose(got, expected, atol=1e-6)


def test_per_parameter_rates_and_checkpoint_state():
    def model():
        pyro.sample("z", dist.Bernoulli(0.3))

    def guide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("l", torch.tensor(0.0))))

    pyro.clear_param_store()
    optim = MultiTensorAdam(control_variate_lr(0.01))
    svi = SVI(model, guide, optim, DiscreteELBO("rebar"))
    for _ in range(3):
        svi.step()
    rates = sorted(g["lr"] for g in optim._optimizer.param_groups)
    assert rates == [0.01, 0.1]
    state = optim.get_state()
    assert {"l", "pyro_discrete/rebar/z/eta"} <= set(state)
    fresh = MultiTensorAdam(control_variate_lr(0.01))
    fresh.set_state(state)
    SVI(model, guide, fresh, DiscreteELBO("rebar")).step()
    step_counts = [float(s["step"]) for s in fresh._optimizer.state.values()]
    assert min(step_counts) == 4  # resumed from the saved moments, not from zero


def test_state_loaded_but_not_yet_stepped_is_saved_again():
    # a checkpoint loaded and saved again before any step (a no-op resume) keeps its moments
    pyro.clear_param_store()
    optim = MultiTensorAdam({"lr": 0.1})
    saved = {
        "l": {"step": torch.tensor(7.0), "exp_avg": torch.ones(()), "exp_avg_sq": torch.ones(())}
    }
    optim.set_state(saved)
    state = optim.get_state()
    assert set(state) == {"l"} and float(state["l"]["step"]) == 7
    assert state["l"]["exp_avg"] is not saved["l"]["exp_avg"]  # a copy, not the loaded tensor
