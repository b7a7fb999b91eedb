"""Plates in compiled steps: subsampled sequential plates are refused with the reason and
the fixes; a vectorised subsampled plate compiles with its indices drawn in the program,
also with REBAR's stacked relaxed passes."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_discrete.infer import CompiledSVI, CompileError, DiscreteELBO

ROWS = [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]] * 3


def _data() -> torch.Tensor:
    return torch.tensor(ROWS)  # in the default dtype the test runs with


def _subsampled_sequential():
    def model(data):
        for i in pyro.plate("rows", len(data), subsample_size=2):
            z = pyro.sample(f"z_{i}", dist.Bernoulli(torch.tensor(0.5)))
            pyro.sample(f"x_{i}", dist.Normal(z, 1.0), obs=data[i, 0])

    def guide(data):
        p = pyro.param("p", torch.tensor(0.0))
        for i in pyro.plate("rows", len(data), subsample_size=2):
            pyro.sample(f"z_{i}", dist.Bernoulli(logits=p))

    return model, guide


def test_subsampled_sequential_plate_refusal_says_why_and_how():
    model, guide = _subsampled_sequential()
    pyro.clear_param_store()
    svi = CompiledSVI(model, guide, Adam({"lr": 0.1}), DiscreteELBO(), backend="trace")
    svi.step(_data())
    with pytest.raises(CompileError) as error:
        svi.step(_data())
    message = str(error.value)
    assert "sequential plate 'rows'" in message and "subsample_size 2" in message
    assert "index.item()" in message  # why: the drawn index is a Python int
    assert "as idx" in message and "fallback='eager'" in message  # how


def test_subsampled_sequential_plate_runs_eagerly_with_fallback():
    model, guide = _subsampled_sequential()
    pyro.clear_param_store()
    svi = CompiledSVI(
        model, guide, Adam({"lr": 0.1}), DiscreteELBO(), backend="trace", fallback="eager"
    )
    svi.step(_data())
    with pytest.warns(RuntimeWarning, match="sequential plate 'rows'"):
        svi.step(_data())
    before = float(pyro.param("p").detach())
    for _ in range(3):
        svi.step(_data())
    assert svi.num_traces == 0
    assert float(pyro.param("p").detach()) != before  # still training, eagerly


def _two_layer_subsampled():
    def model(data):
        w = pyro.param("w", torch.ones(2, 3))
        with pyro.plate("data", len(data), subsample_size=4) as idx:
            z1 = pyro.sample("z1", dist.Bernoulli(logits=torch.zeros(2)).to_event(1))
            z2 = pyro.sample("z2", dist.Bernoulli(logits=z1 - 0.5).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z2 @ w).to_event(1), obs=data[idx])

    def guide(data):
        a = pyro.param("a", torch.zeros(3, 2))
        b = pyro.param("b", torch.zeros(2, 2))
        with pyro.plate("data", len(data), subsample_size=4) as idx:
            z1 = pyro.sample("z1", dist.Bernoulli(logits=data[idx] @ a).to_event(1))
            pyro.sample("z2", dist.Bernoulli(logits=z1 @ b).to_event(1))

    return model, guide


@pytest.mark.parametrize("estimator", ["rebar", "reinforce"])
def test_vectorised_subsampled_plate_compiles_as_eager(estimator):
    """Indices drawn inside the program every replay: the same parameters as eager SVI
    after the same steps from the same seed (REBAR with its stacked relaxed pass)."""
    model, guide = _two_layer_subsampled()
    stores = []
    for compiled in (False, True):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        elbo = DiscreteELBO(estimator=estimator)
        if compiled:
            svi = CompiledSVI(model, guide, Adam({"lr": 0.05}), elbo, backend="trace")
        else:
            svi = SVI(model, guide, Adam({"lr": 0.05}), elbo)
        for _ in range(6):
            svi.step(_data())
        stores.append({k: v.detach().clone() for k, v in pyro.get_param_store().items()})
        if compiled:
            assert svi.num_traces == 1
        if estimator == "rebar":
            assert [s.relaxed_stacking for s in elbo._structures.values()] == [True]
    eager, replayed = stores
    assert eager.keys() == replayed.keys()
    for name in eager:
        torch.testing.assert_close(replayed[name], eager[name], rtol=1e-5, atol=1e-6)
