import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, TraceGraph_ELBO
from pyro.poutine.util import site_is_subsample

from pyro_discrete.models import SigmoidBeliefNet, sbn_linear1, sbn_linear2, sbn_nonlinear


def _x_mean(d=784, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(d, generator=g)
    m[:10] = 0.0  # exercises the clip at 0.001
    m[10:20] = 1.0  # and at 0.999
    return m


def _sample_sites(trace):
    return [n for n, s in trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)]


def _traces(vae, x):
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    return guide_tr, model_tr


@pytest.mark.parametrize(
    "ctor,latents,num_linear",
    [(sbn_linear1, ["z1"], 2), (sbn_linear2, ["z1", "z2"], 4), (sbn_nonlinear, ["z1"], 6)],
)
def test_architecture_and_site_shapes(ctor, latents, num_linear):
    vae = ctor(x_mean=_x_mean())
    assert sum(isinstance(m, torch.nn.Linear) for m in vae.modules()) == num_linear
    x = torch.bernoulli(torch.full((5, 784), 0.3))
    guide_tr, model_tr = _traces(vae, x)
    assert _sample_sites(guide_tr) == latents
    for name in latents:
        value = guide_tr.nodes[name]["value"]
        assert value.shape == (5, 200)
        assert set(value.unique().tolist()) <= {0.0, 1.0}
        assert guide_tr.nodes[name]["fn"].event_shape == (200,)
    model_tr.compute_log_prob()
    assert model_tr.nodes["x"]["log_prob"].shape == (5,)
    assert model_tr.nodes["x"]["is_observed"]
    # the model samples top-down: zL first, x last
    order = _sample_sites(model_tr)
    assert order == [*reversed(latents), "x"]


@pytest.mark.parametrize("ctor", [sbn_linear1, sbn_linear2, sbn_nonlinear])
def test_protocol_initialisation(ctor):
    x_mean = _x_mean()
    vae = ctor(x_mean=x_mean)
    bias = vae.decoder.layers[0][-1].bias
    expected = torch.logit(x_mean.clamp(0.001, 0.999))
    assert torch.allclose(bias, expected)
    assert bias[0].item() == pytest.approx(torch.logit(torch.tensor(0.001)).item())
    assert torch.count_nonzero(vae.decoder.prior_logits) == 0
    assert torch.equal(vae.x_mean, x_mean)
    # untrained decoder, zero weights: predicts the pixel marginals whatever the latents
    with torch.no_grad():
        for layer in vae.decoder.layers[0]:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.zero_()
        out = vae.decoder.layers[0](2 * torch.bernoulli(torch.full((3, 200), 0.5)) - 1)
    assert torch.allclose(torch.sigmoid(out), x_mean.clamp(0.001, 0.999).expand(3, -1), atol=1e-6)


def test_encoder_centres_its_input():
    x_mean = _x_mean()
    vae = sbn_linear1(x_mean=x_mean)
    x = x_mean.clone().unsqueeze(0)  # x - x̄ = 0, so the logits are the encoder bias
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    logits = guide_tr.nodes["z1"]["fn"].base_dist.logits
    assert torch.allclose(logits, vae.encoder[0][-1].bias)


def test_param_store_names_split_encoder_and_decoder():
    vae = sbn_linear2()
    _traces(vae, torch.zeros(2, 784))
    names = set(pyro.get_param_store().keys())
    assert "sbn_linear2_decoder$$$prior_logits" in names
    assert "sbn_linear2_encoder$$$0.0.weight" in names
    n_params = sum(p.numel() for p in vae.parameters())
    assert sum(pyro.param(n).numel() for n in names) == n_params


@pytest.mark.parametrize("ctor", [sbn_linear2, sbn_nonlinear])
def test_model_and_guide_are_differentiable_in_relaxed_latents(ctor):
    vae = ctor()
    x = torch.bernoulli(torch.full((4, 784), 0.3))
    names = ["z1", "z2"][: vae.num_layers]
    relaxed = {n: torch.rand(4, 200, requires_grad=True) for n in names}
    with pyro.validation_enabled(False):
        model_tr = poutine.trace(poutine.condition(vae.model, data=relaxed)).get_trace(x)
        guide_tr = poutine.trace(poutine.condition(vae.guide, data=relaxed)).get_trace(x)
    elbo = model_tr.log_prob_sum() - guide_tr.log_prob_sum()
    grads = torch.autograd.grad(elbo, list(relaxed.values()))
    for g in grads:
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_vectorised_particles_broadcast():
    vae = sbn_linear2()
    x = torch.bernoulli(torch.full((5, 784), 0.3))
    with pyro.plate("particles", 3, dim=-2):
        guide_tr, model_tr = _traces(vae, x)
    assert guide_tr.nodes["z2"]["value"].shape == (3, 5, 200)
    model_tr.compute_log_prob()
    assert model_tr.nodes["x"]["log_prob"].shape == (3, 5)


def test_svi_reduces_loss_on_mnist_like_data():
    torch.manual_seed(0)
    # two prototype images with pixel noise: a 1-layer SBN should learn them fast
    protos = torch.bernoulli(torch.full((2, 784), 0.3))
    x = protos[torch.arange(64) % 2]
    x = torch.where(torch.rand_like(x) < 0.02, 1 - x, x)
    vae = SigmoidBeliefNet(784, (20,), (), x_mean=x.mean(0))
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 3e-2}), TraceGraph_ELBO())
    first = sum(svi.step(x) for _ in range(5)) / 5
    for _ in range(80):
        svi.step(x)
    last = sum(svi.step(x) for _ in range(5)) / 5
    assert last < first - 5 * 64


def test_bad_x_mean_shape():
    with pytest.raises(ValueError, match="x_mean"):
        SigmoidBeliefNet(784, x_mean=torch.zeros(10))
    with pytest.raises(ValueError, match="stochastic layer"):
        SigmoidBeliefNet(784, latent_dims=())
