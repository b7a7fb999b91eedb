import numpy as np
import pyro
import pytest
import torch
import torch.nn.functional as F

from pyro_discrete.diagnostics import log_importance_weights, psis_khat, to_inference_data
from pyro_discrete.models import CategoricalVAE, SigmoidBeliefNet


def diagonal_sbn(d=30, a=2.0):
    """x_i depends on z_i alone, so the posterior factorises and a linear encoder can match it
    exactly; returns the model with its guide set to that exact posterior."""
    torch.manual_seed(0)
    vae = SigmoidBeliefNet(x_dim=d, latent_dims=(d,), name="diag")
    with torch.no_grad():
        dec = vae.decoder.layers[0][0]
        dec.weight.copy_(torch.eye(d) * a)
        dec.bias.normal_(0, 1)
        b = dec.bias
        # posterior logit of z_i (prior logit 0; z enters the decoder as 2 z - 1)
        l1 = F.logsigmoid(a + b) - F.logsigmoid(b - a)  # x_i = 1
        l0 = F.logsigmoid(-a - b) - F.logsigmoid(a - b)  # x_i = 0
        enc = vae.encoder[0][0]  # input x - 0.5
        enc.weight.copy_(torch.diag(l1 - l0))
        enc.bias.copy_((l1 + l0) / 2)
    return vae


def test_inference_data_layout_and_values(tiny):
    pyro.set_rng_seed(3)
    idata = to_inference_data(tiny.vae.model, tiny.vae.guide, tiny.x, num_samples=40)
    z = idata.posterior["z1"]
    assert z.dims == ("chain", "draw", "data", "z1_dim_0")
    assert z.shape == (1, 40, 6, 3)
    assert set(np.unique(z.values)) <= {0, 1}
    lw = idata.sample_stats["log_weights"]
    assert lw.dims == ("chain", "draw", "data") and lw.shape == (1, 40, 6)
    np.testing.assert_array_equal(idata.observed_data["x"].values, tiny.x.numpy())
    # the same random draws give the same log-weights as the bounds module
    pyro.set_rng_seed(3)
    expected = log_importance_weights(tiny.vae.model, tiny.vae.guide, tiny.x, num_samples=40)
    np.testing.assert_allclose(lw.values[0], expected.numpy(), rtol=1e-6)


def test_one_hot_latents_keep_their_event_dims():
    vae = CategoricalVAE(x_dim=8, num_latents=2, num_classes=3, hidden=(5,))
    idata = to_inference_data(vae.model, vae.guide, torch.ones(4, 8), num_samples=10)
    z = idata.posterior["z1"]
    assert z.shape == (1, 10, 4, 2, 3)
    assert (z.sum("z1_dim_1") == 1).all()


def test_khat_separates_good_and_bad_guides():
    vae = diagonal_sbn()
    x = torch.bernoulli(torch.full((8, 30), 0.5))
    pyro.set_rng_seed(0)
    with torch.no_grad():
        vae.encoder[0][0].bias.add_(0.5 * torch.randn(30))  # near the posterior, not on it
    near = psis_khat(vae.model, vae.guide, x, num_samples=2000)
    with torch.no_grad():
        vae.encoder[0][0].weight.zero_()
        vae.encoder[0][0].bias.zero_()  # the prior as proposal: far too broad
    prior = psis_khat(vae.model, vae.guide, x, num_samples=2000)
    assert near.shape == prior.shape == (8,)
    assert (near < 0.7).all()
    assert (prior > 0.7).all()


def test_khat_from_existing_inference_data(tiny):
    idata = to_inference_data(tiny.vae.model, tiny.vae.guide, tiny.x, num_samples=30)
    assert psis_khat(idata=idata).shape == (6,)
    with pytest.raises(ValueError, match="idata"):
        psis_khat()
