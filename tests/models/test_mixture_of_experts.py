import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from pyro_discrete.models import (
    EnumeratedMixtureOfExperts,
    MixtureOfExperts,
    synthetic_moe_data,
)


def test_synthetic_data_is_reproducible_and_uses_every_expert():
    a = synthetic_moe_data(num_points=500, num_experts=4, seed=3)
    b = synthetic_moe_data(num_points=500, num_experts=4, seed=3)
    assert torch.equal(a.y, b.y) and torch.equal(a.assignment, b.assignment)
    assert a.x.shape == (500, 2) and a.y.shape == (500, 1)
    assert a.assignment.bincount(minlength=4).min() > 0
    assert not torch.equal(a.y, synthetic_moe_data(num_points=500, num_experts=4, seed=4).y)


def _exact_elbo(moe, x, y):
    # sum_k q_k [log p(z=k|x) + log N(y | expert k) - log q_k], per data point
    K = moe.num_experts
    log_q = moe.posterior(torch.cat([x, y], -1)).log_softmax(-1)
    log_prior = moe.generative.gate(x).log_softmax(-1)
    loc = moe.expert_outputs(x)
    scale = moe.generative.log_scale.exp()
    log_lik = torch.distributions.Normal(loc, scale).log_prob(y.unsqueeze(-2)).sum(-1)
    assert log_lik.shape == (x.shape[0], K)
    return (log_q.exp() * (log_prior + log_lik - log_q)).sum(-1)


@pytest.mark.parametrize("expert_hidden", [(), (5,)])
def test_enumerated_variant_gives_the_exact_elbo(expert_hidden):
    data = synthetic_moe_data(num_points=40, num_experts=3, seed=0)
    moe = EnumeratedMixtureOfExperts(2, 1, 3, expert_hidden=expert_hidden)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(moe.model, moe.guide, data.x, data.y)
    assert loss == pytest.approx(-_exact_elbo(moe, data.x, data.y).sum().item(), rel=1e-5)


def test_sampling_and_enumerated_variants_agree_configuration_by_configuration():
    data = synthetic_moe_data(num_points=10, num_experts=3, seed=1)
    moe = MixtureOfExperts(2, 1, 3, expert_hidden=(4,))
    enum = EnumeratedMixtureOfExperts(2, 1, 3, expert_hidden=(4,))
    enum.load_state_dict(moe.state_dict())  # same layout, so parameters move across
    for k in range(3):
        index = torch.full((10,), k)
        onehot = torch.nn.functional.one_hot(index, 3).float()
        t1 = poutine.trace(poutine.condition(moe.model, {"z1": onehot})).get_trace(data.x, data.y)
        t2 = poutine.trace(poutine.condition(enum.model, {"z1": index})).get_trace(data.x, data.y)
        assert torch.allclose(t1.log_prob_sum(), t2.log_prob_sum())


def test_log_likelihood_is_the_marginal_of_the_model():
    data = synthetic_moe_data(num_points=7, num_experts=3, seed=2)
    moe = MixtureOfExperts(2, 1, 3)
    joint = []
    for k in range(3):
        onehot = torch.nn.functional.one_hot(torch.full((7,), k), 3).float()
        tr = poutine.trace(poutine.condition(moe.model, {"z1": onehot})).get_trace(data.x, data.y)
        tr.compute_log_prob()
        joint.append(tr.nodes["z1"]["log_prob"] + tr.nodes["y"]["log_prob"])
    expected = torch.stack(joint).logsumexp(0)
    assert torch.allclose(moe.log_likelihood(data.x, data.y), expected, atol=1e-5)


def test_routing_is_differentiable_in_the_one_hot():
    data = synthetic_moe_data(num_points=6, num_experts=4, seed=0)
    moe = MixtureOfExperts(2, 1, 4)
    soft = torch.randn(6, 4).softmax(-1).requires_grad_()
    with pyro.validation_enabled(False):
        tr = poutine.trace(poutine.condition(moe.model, {"z1": soft})).get_trace(data.x, data.y)
    (grad,) = torch.autograd.grad(tr.nodes["y"]["fn"].log_prob(data.y).sum(), soft)
    assert grad.abs().sum() > 0


def test_shape_errors():
    moe = MixtureOfExperts(2, 1, 3)
    with pytest.raises(ValueError, match="y must have shape"):
        moe.model(torch.zeros(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="x must have shape"):
        moe.guide(torch.zeros(4, 3), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="two experts"):
        MixtureOfExperts(2, 1, 1)
