import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_discrete.diagnostics import (
    elbo_estimate,
    importance_weighted_bound,
    log_importance_weights,
)
from pyro_discrete.models import MixtureOfExperts, synthetic_moe_data


def test_log_weights_match_enumeration(tiny):
    log_w, guide_tr, _ = log_importance_weights(
        tiny.vae.model, tiny.vae.guide, tiny.x, num_samples=7, return_traces=True
    )
    assert log_w.shape == (7, 6)
    z = guide_tr.nodes["z1"]["value"]  # (7, 6, 3)
    index = (z * torch.tensor([1.0, 2.0, 4.0])).sum(-1).long()  # configuration number
    log_p, log_q = tiny.joint_and_guide()
    expected = (log_p - log_q).detach().gather(0, index)
    assert torch.allclose(log_w, expected, atol=1e-5)


def test_bound_increases_with_k_towards_log_marginal(tiny):
    pyro.set_rng_seed(0)
    x = tiny.x.repeat(50, 1)  # 300 rows: averages out the Monte Carlo noise
    log_px = tiny.log_marginal().repeat(50).mean().item()
    elbo = tiny.exact_elbo().detach().repeat(50).mean().item()
    bounds = {
        k: importance_weighted_bound(tiny.vae.model, tiny.vae.guide, x, num_samples=k)
        for k in (1, 10, 100, 1000)
    }
    assert bounds[1] == pytest.approx(elbo, abs=0.15)
    assert bounds[1] < bounds[10] < bounds[100] <= log_px + 1e-3
    assert elbo < log_px - 0.3  # the guide is far from the posterior, so the gap is visible
    assert bounds[1000] == pytest.approx(log_px, abs=0.02)


def test_chunks_and_minibatches_combine_exactly(tiny):
    # Replays the random draws the function makes (minibatch by minibatch, chunk by chunk)
    # and combines them by hand: chunking must be an exact log-sum-exp of the parts.
    x = tiny.x.repeat(4, 1)  # 24 rows
    pyro.set_rng_seed(1)
    got = importance_weighted_bound(
        tiny.vae.model,
        tiny.vae.guide,
        x,
        num_samples=20,
        chunk_size=7,
        batch_size=10,
        reduction="none",
    )
    pyro.set_rng_seed(1)
    expected = []
    for rows in (x[:10], x[10:20], x[20:]):
        parts = [
            log_importance_weights(tiny.vae.model, tiny.vae.guide, rows, num_samples=k)
            for k in (7, 7, 6)
        ]
        expected.append(torch.cat(parts).logsumexp(0) - math.log(20))
    assert got.shape == (24,)
    assert torch.allclose(got, torch.cat(expected))


def test_elbo_estimate_averages_log_weights(tiny):
    # log-weights here have a standard deviation of about 6 nats: 120,000 draws give a
    # standard error of 0.017
    pyro.set_rng_seed(0)
    est = elbo_estimate(tiny.vae.model, tiny.vae.guide, tiny.x.repeat(10, 1), num_samples=2000)
    assert est == pytest.approx(tiny.exact_elbo().mean().item(), abs=0.07)


def test_two_argument_model_converges_to_exact_likelihood():
    pyro.set_rng_seed(0)
    data = synthetic_moe_data(num_points=30, num_experts=3, seed=0)
    moe = MixtureOfExperts(2, 1, 3)
    bound = importance_weighted_bound(moe.model, moe.guide, data.x, data.y, num_samples=3000)
    exact = moe.log_likelihood(data.x, data.y).mean().item()
    assert bound == pytest.approx(exact, abs=0.02)


def test_global_latent_is_refused():
    def model(x):
        scale = pyro.sample("scale", dist.Bernoulli(0.5))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(scale, 1.0), obs=x)

    def guide(x):
        pyro.sample("scale", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match="not inside the data plate"):
        importance_weighted_bound(model, guide, torch.zeros(5), num_samples=3)


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="positive"):
        importance_weighted_bound(tiny.vae.model, tiny.vae.guide, tiny.x, num_samples=0)
    with pytest.raises(ValueError, match="reduction"):
        importance_weighted_bound(tiny.vae.model, tiny.vae.guide, tiny.x, reduction="max")


def test_no_gradients_are_recorded(tiny):
    log_w = log_importance_weights(tiny.vae.model, tiny.vae.guide, tiny.x, num_samples=3)
    assert not log_w.requires_grad
    assert math.isfinite(log_w.sum().item())
    tr = poutine.trace(tiny.vae.guide).get_trace(tiny.x)
    assert tr.nodes["z1"]["fn"].base_dist.logits.requires_grad  # outside: gradients as usual
