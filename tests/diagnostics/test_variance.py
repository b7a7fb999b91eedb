import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import TraceGraph_ELBO

from pyro_discrete.diagnostics import bias_ztest, gradient_variance, guide_param_names
from pyro_discrete.models import SigmoidBeliefNet


class PathwiseOnlyELBO:
    """Differentiates log p(x, z) - log q(z|x) at the sampled z and drops the score term:
    the gradient an autodiff user gets by treating discrete samples as constants (biased)."""

    def loss_and_grads(self, model, guide, *args):
        guide_tr = poutine.trace(guide).get_trace(*args)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args)
        loss = guide_tr.log_prob_sum() - model_tr.log_prob_sum()
        loss.backward()
        return loss.item()


class StatefulELBO(TraceGraph_ELBO):
    """Keeps a running counter in the param store, like NVIL's running statistics."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def loss_and_grads(self, model, guide, *args, **kwargs):
        counter = pyro.param("pyro_discrete/counter", torch.zeros(()))
        self.seen.append(counter.item())
        with torch.no_grad():
            counter.add_(1.0)
        return super().loss_and_grads(model, guide, *args, **kwargs)


def test_default_params_are_the_guides(tiny):
    names = guide_param_names(tiny.vae.guide, tiny.x)
    assert names == ["tiny_encoder$$$0.0.weight", "tiny_encoder$$$0.0.bias"]
    stats = gradient_variance(
        TraceGraph_ELBO(), tiny.vae.model, tiny.vae.guide, tiny.x, num_samples=5
    )
    assert set(stats.variance) == set(names)
    assert stats.num_components == 4 * 3 + 3


def test_more_particles_divide_the_variance(tiny):
    pyro.set_rng_seed(0)
    args = (tiny.vae.model, tiny.vae.guide, tiny.x)
    one = gradient_variance(TraceGraph_ELBO(), *args, num_samples=200)
    four = gradient_variance(
        TraceGraph_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1),
        *args,
        num_samples=200,
    )
    # Var of a mean of 4 i.i.d. draws is a quarter: log 4 = 1.39
    assert one.log_mean_variance - four.log_mean_variance == pytest.approx(1.39, abs=0.4)
    assert one.num_samples == 200 and one.loss > 0


def test_param_store_is_restored_before_each_draw_and_on_exit(tiny):
    elbo = StatefulELBO()
    elbo.loss_and_grads(tiny.vae.model, tiny.vae.guide, tiny.x)  # counter: 0 -> 1
    before = {n: p.detach().clone() for n, p in pyro.get_param_store().named_parameters()}
    gradient_variance(elbo, tiny.vae.model, tiny.vae.guide, tiny.x, num_samples=6)
    # warm-up saw 1 and moved it to 2; every counted draw then started from 2
    assert elbo.seen == [0.0, 1.0] + [2.0] * 6
    after = dict(pyro.get_param_store().named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert all(p.grad is None for p in after.values())
    assert (
        "pyro_discrete/counter"
        not in gradient_variance(
            elbo, tiny.vae.model, tiny.vae.guide, tiny.x, num_samples=2
        ).variance
    )


def test_stale_param_store_is_reported():
    x = torch.ones(3, 4)
    first = SigmoidBeliefNet(x_dim=4, latent_dims=(2,), name="stale")
    poutine.trace(first.guide).get_trace(x)
    second = SigmoidBeliefNet(x_dim=4, latent_dims=(2,), name="stale")  # same names
    with pytest.raises(RuntimeError, match="clear_param_store"):
        gradient_variance(TraceGraph_ELBO(), second.model, second.guide, x, num_samples=3)


def test_ztest_accepts_an_unbiased_estimator(tiny):
    pyro.set_rng_seed(0)
    exact = tiny.exact_loss_grads()
    result = bias_ztest(
        TraceGraph_ELBO(), exact, tiny.vae.model, tiny.vae.guide, tiny.x, num_samples=400
    )
    assert result.num_components == 15
    assert not result.rejects(0.01)
    assert result.max_abs_z < 4


def test_ztest_flags_a_biased_estimator(tiny):
    pyro.set_rng_seed(0)
    exact = tiny.exact_loss_grads()
    result = bias_ztest(
        PathwiseOnlyELBO(), exact, tiny.vae.model, tiny.vae.guide, tiny.x, num_samples=400
    )
    assert result.rejects(1e-6) and result.max_abs_z > 6


def test_ztest_between_two_estimators(tiny):
    pyro.set_rng_seed(1)
    args = (tiny.vae.model, tiny.vae.guide, tiny.x)
    two = TraceGraph_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    same = bias_ztest(TraceGraph_ELBO(), two, *args, num_samples=120)
    differ = bias_ztest(PathwiseOnlyELBO(), TraceGraph_ELBO(), *args, num_samples=120)
    assert not same.rejects(0.01)
    assert differ.rejects(1e-6)
    assert set(differ.z) == {"tiny_encoder$$$0.0.weight", "tiny_encoder$$$0.0.bias"}


def test_ztest_p_value_is_bonferroni_corrected(tiny):
    # against a wrong "exact" gradient that differs in one component only by a set amount
    pyro.set_rng_seed(2)
    exact = tiny.exact_loss_grads()
    single = bias_ztest(
        TraceGraph_ELBO(),
        exact,
        tiny.vae.model,
        tiny.vae.guide,
        tiny.x,
        num_samples=50,
        params=["tiny_encoder$$$0.0.bias"],
    )
    assert single.num_components == 3
    import math

    assert single.p_value == pytest.approx(
        min(1.0, 3 * math.erfc(single.max_abs_z / math.sqrt(2))), rel=1e-9
    )
