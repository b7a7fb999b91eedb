"""``double_cv`` and ``rodeo`` inside SVI: by one argument, per site, their state in the
param store, options, and models whose signal has no gradient in the value."""

from __future__ import annotations

import importlib

import pyro
import pyro.distributions as dist
import pytest
import torch
from infer.problems import PROBLEMS
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_discrete.infer import ESTIMATORS, DiscreteELBO, control_variate_lr
from pyro_discrete.infer.adapters import value_gradient


@pytest.mark.parametrize("name", ["double_cv", "rodeo"])
def test_svi_trains_the_control_variates_in_the_param_store(name):
    problem = PROBLEMS["sbn_two_layer"]()
    problem.reset()
    pyro.set_rng_seed(0)
    elbo = ESTIMATORS[name](num_particles=3, max_plate_nesting=1)
    svi = SVI(problem.model, problem.guide, Adam(control_variate_lr(0.01)), elbo)
    losses = [svi.step(*problem.args) for _ in range(25)]
    assert all(torch.isfinite(torch.tensor(losses)))
    store = pyro.get_param_store()
    alphas = {k: store[k].item() for k in store.keys() if k.endswith("/alpha")}
    assert set(alphas) == {f"pyro_discrete/{name}/z1/alpha", f"pyro_discrete/{name}/z2/alpha"}
    assert all(abs(a) > 1e-3 for a in alphas.values()), alphas  # moved from 0
    if name == "rodeo":
        assert "pyro_discrete/rodeo/z1/control$$$0.weight" in store.keys()


def test_rodeo_network_resumes_from_a_saved_param_store(tmp_path):
    problem = PROBLEMS["sbn_two_layer"]()
    problem.reset()
    elbo = DiscreteELBO("rodeo", num_particles=2, max_plate_nesting=1, hidden=(8,))
    svi = SVI(problem.model, problem.guide, Adam({"lr": 0.05}), elbo)
    for _ in range(5):
        svi.step(*problem.args)
    name = "pyro_discrete/rodeo/z1/control$$$0.weight"
    saved = pyro.get_param_store()[name].detach().clone()
    pyro.get_param_store().save(tmp_path / "store.pt")
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "store.pt")
    elbo.loss_and_grads(problem.model, problem.guide, *problem.args)  # rebuilds the network
    assert torch.equal(elbo.estimator.networks["pyro_discrete/rodeo/z1/control"][0].weight, saved)


def test_per_site_choice_next_to_a_categorical_site():
    """A Bernoulli site uses 'rodeo' through infer=..., a one-hot site RLOO."""

    def model(y):
        with pyro.plate("data", 3):
            b = pyro.sample("b", dist.Bernoulli(0.4 * torch.ones(3, 2)).to_event(1))
            c = pyro.sample("c", dist.OneHotCategorical(logits=torch.zeros(3, 3)))
            pyro.sample("y", dist.Normal(b.sum(-1) + (c * torch.arange(3.0)).sum(-1), 1.0), obs=y)

    def guide(y):
        q = pyro.param("q", torch.zeros(2))
        r = pyro.param("r", torch.zeros(3))
        with pyro.plate("data", 3):
            pyro.sample(
                "b",
                dist.Bernoulli(logits=q + y.unsqueeze(-1)).to_event(1),
                infer={"estimator": "rodeo", "estimator_options": {"hidden": (4,)}},
            )
            pyro.sample("c", dist.OneHotCategorical(logits=r.expand(3, 3)))

    pyro.set_rng_seed(1)
    elbo = DiscreteELBO("rloo", num_particles=2, max_plate_nesting=1)
    elbo.loss_and_grads(model, guide, torch.tensor([0.5, 1.0, 2.0]))
    keys = [k for k in pyro.get_param_store().keys() if k.startswith("pyro_discrete/")]
    assert keys and all(k.startswith("pyro_discrete/rodeo/b/") for k in keys)
    assert pyro.param("q").grad is not None and pyro.param("r").grad is not None


@pytest.mark.parametrize("name", ["double_cv", "rodeo"])
def test_value_gradient_of_a_value_used_as_an_index(name, monkeypatch):
    """The model reads b only as an index, so the value gradient is that of the guide's
    own term -log q(b) = -(b q - softplus(q)): exactly -q; the step runs."""
    means = torch.tensor([-1.0, 2.0])

    def model(y):
        with pyro.plate("data", 2):
            b = pyro.sample("b", dist.Bernoulli(0.5 * torch.ones(2)))
            pyro.sample("y", dist.Normal(means[b.long()], 1.0), obs=y)

    def guide(y):
        q = pyro.param("q", torch.tensor([0.3, -0.2]))
        with pyro.plate("data", 2):
            pyro.sample("b", dist.Bernoulli(logits=q))

    module = importlib.import_module(f"pyro_discrete.infer.adapters.{name}")
    seen = []

    def spy(ev, site):
        signal, grad = value_gradient.signal_and_value_gradient(ev, site)
        seen.append(grad)
        return signal, grad

    monkeypatch.setattr(module, "signal_and_value_gradient", spy)
    elbo = DiscreteELBO(name, num_particles=4, max_plate_nesting=1, alpha=2.0)
    elbo.loss_and_grads(model, guide, torch.tensor([0.0, 1.5]))
    assert len(seen) == 1 and seen[0].shape == (4, 2)
    assert torch.allclose(seen[0], -pyro.param("q").detach().expand(4, 2))
    assert torch.isfinite(pyro.param("q").grad).all()


def test_options_are_checked():
    with pytest.raises(TypeError, match="unknown option"):
        DiscreteELBO("double_cv", num_particles=2, beta=1.0)
    with pytest.raises(ValueError, match="hidden"):
        DiscreteELBO("rodeo", num_particles=2, hidden=(0,))
    with pytest.raises(TypeError, match="alpha must be a number"):
        DiscreteELBO("rodeo", num_particles=2, alpha="1")
