import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch.distributions.constraints import unit_interval

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


# A global Bernoulli latent g shared by all data points, and a per-datum Bernoulli z: small
# enough for exact sums over g and each z_n.
def global_flip_model(x):
    g = pyro.sample("g", dist.Bernoulli(0.5))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(2.0 * g - 1.0 + z, 1.0), obs=x)


def global_flip_guide(x):
    # q(g) far from p(g): the global KL, 0.64 nats, is visible in a per-datum figure
    g = pyro.sample("g", dist.Bernoulli(0.99))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Bernoulli(torch.sigmoid(x + g - 1.0)))


def global_flip_exact(x):
    """Exact data-set ELBO and log p(x_1:N), by summing over g and every z_n."""
    elbo, log_joint = 0.0, []
    for g, q_g in ((0.0, 0.01), (1.0, 0.99)):
        log_p_g = math.log(0.5)
        local_elbo, local_marginal = 0.0, 0.0
        q1 = torch.sigmoid(x + g - 1.0)
        for z, p_z, q_z in ((0.0, 0.7, 1 - q1), (1.0, 0.3, q1)):
            log_p = math.log(p_z) + dist.Normal(2.0 * g - 1.0 + z, 1.0).log_prob(x)
            local_elbo = local_elbo + q_z * (log_p - q_z.log())
            local_marginal = local_marginal + log_p.exp()
        elbo += q_g * (log_p_g - math.log(q_g) + local_elbo.sum().item())
        log_joint.append(log_p_g + local_marginal.log().sum().item())
    return elbo, torch.tensor(log_joint).logsumexp(0).item()


FLIP_X = torch.tensor([-1.2, 0.3, 2.1, 0.8, -0.4, 1.5])


def test_elbo_with_a_global_latent_counts_its_term_once():
    exact_elbo, _ = global_flip_exact(FLIP_X)
    pyro.set_rng_seed(0)
    whole = elbo_estimate(
        global_flip_model, global_flip_guide, FLIP_X, num_samples=20000, batch_size=None
    )
    # Three minibatches draw g three times; its term must still enter once, not three times
    # (that would be 2 * 0.64 / 6 = 0.21 nats lower).
    batched = elbo_estimate(
        global_flip_model, global_flip_guide, FLIP_X, num_samples=20000, batch_size=2
    )
    assert whole == pytest.approx(exact_elbo / 6, abs=0.02)
    assert batched == pytest.approx(exact_elbo / 6, abs=0.02)


def test_bound_with_a_global_latent_is_that_of_the_whole_data_set():
    exact_elbo, log_px = global_flip_exact(FLIP_X)
    pyro.set_rng_seed(0)
    total = importance_weighted_bound(
        global_flip_model,
        global_flip_guide,
        FLIP_X,
        num_samples=20000,
        chunk_size=3000,
        batch_size=None,
        reduction="sum",
    )
    pyro.set_rng_seed(0)
    mean = importance_weighted_bound(
        global_flip_model,
        global_flip_guide,
        FLIP_X,
        num_samples=20000,
        chunk_size=3000,
        batch_size=None,
    )
    assert mean == pytest.approx(total / 6)
    assert exact_elbo + 0.2 < total <= log_px + 0.01  # far above the ELBO, at log p(x_1:N)
    assert total == pytest.approx(log_px, abs=0.05)


def test_global_latent_errors_name_the_site_and_the_fix():
    with pytest.raises(ValueError, match=r"site 'g' \(Bernoulli\) is global.*batch_size=None"):
        importance_weighted_bound(global_flip_model, global_flip_guide, FLIP_X, batch_size=4)
    with pytest.raises(ValueError, match="'g' \\(Bernoulli\\) is global.*reduction='sum'"):
        importance_weighted_bound(
            global_flip_model, global_flip_guide, FLIP_X, batch_size=None, reduction="none"
        )
    with pytest.raises(ValueError, match="'g' \\(Bernoulli\\) is global.*per-datum"):
        log_importance_weights(global_flip_model, global_flip_guide, FLIP_X, num_samples=3)


def mixture_model(x):
    # The component plate sits at the data plate's dim without being nested in it: a global
    # site of size 3 next to 300 data points.
    with pyro.plate("components", 3):
        locs = pyro.sample("locs", dist.Normal(0.0, 5.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Categorical(torch.ones(3) / 3))
        pyro.sample("x", dist.Normal(locs.gather(-1, z), 1.0), obs=x)


def mixture_guide(x):
    with pyro.plate("components", 3):
        locs = pyro.sample("locs", dist.Normal(torch.tensor([-2.0, 0.0, 2.0]), 0.05))
    with pyro.plate("data", x.shape[0]):
        # the exact posterior of z given locs: only the draws of locs add noise
        logits = -0.5 * (x.unsqueeze(-1) - locs.unsqueeze(-2)) ** 2
        pyro.sample("z", dist.Categorical(logits=logits))


def test_global_site_in_a_plate_beside_the_data_plate():
    # Reported: "The size of tensor a (3) must match the size of tensor b (300)".
    x = dist.Normal(torch.tensor([-2.0, 0.0, 2.0]), 1.0).sample((100,)).reshape(-1)
    pyro.set_rng_seed(0)
    got = elbo_estimate(mixture_model, mixture_guide, x, num_samples=100, batch_size=120)
    reference = pyro.infer.Trace_ELBO(
        num_particles=400, vectorize_particles=True, max_plate_nesting=1
    ).loss(mixture_model, mixture_guide, x)
    assert got == pytest.approx(-reference / 300, abs=0.02)
    with pytest.raises(ValueError, match=r"'locs' \(Normal\) is global.*batch_size=None"):
        importance_weighted_bound(mixture_model, mixture_guide, x)
    bound = importance_weighted_bound(mixture_model, mixture_guide, x, batch_size=None)
    assert bound == pytest.approx(got, abs=0.05)


POINTS = torch.linspace(-2.0, 2.0, 300)


def flip_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0), obs=x)


def per_datum_guide(x):
    # Non-amortised: one parameter per data point, so only the whole data set fits the plate.
    # Set to the exact posterior of z_n: every weight is then p(x_n).
    probs = pyro.param("probs", torch.sigmoid(2.0 * POINTS), constraint=unit_interval)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Bernoulli(probs))


def broadcasting_per_datum_guide(x):
    probs = pyro.param("probs", torch.full((300,), 0.5), constraint=unit_interval)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Bernoulli(probs * torch.ones_like(x)))


def test_non_amortised_guide_needs_one_pass():
    x = POINTS
    # Reported: Pyro's "Shape mismatch inside plate('data') at site z dim -1, 100 vs 300".
    with pytest.raises(ValueError, match=r"site 'z' has size 300.*100 rows.*batch_size=None"):
        importance_weighted_bound(flip_model, per_datum_guide, x)
    with pytest.raises(ValueError, match=r"minibatch of 50 rows.*non-amortised.*batch_size=None"):
        elbo_estimate(flip_model, broadcasting_per_datum_guide, x, batch_size=50)
    # In one pass; the guide is the exact posterior, so the bound is log p(x_n) for any K.
    bound = importance_weighted_bound(
        flip_model, per_datum_guide, x, num_samples=7, batch_size=None, reduction="none"
    )
    exact = torch.stack(
        [dist.Normal(2.0 * z - 1.0, 1.0).log_prob(x) for z in (0.0, 1.0)]
    ).logsumexp(0) + math.log(0.5)
    assert torch.allclose(bound, exact, atol=1e-5)


def test_observations_outside_any_plate_are_refused():
    def model(x):
        z = pyro.sample("z", dist.Bernoulli(0.5).expand([5]).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.sample("z", dist.Bernoulli(0.5).expand([5]).to_event(1))

    with pytest.raises(ValueError, match=r"no observed site \('x'\) is inside a plate"):
        elbo_estimate(model, guide, torch.zeros(5))


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
