import pyro
import pyro.poutine as poutine
import torch

from pyro_discrete.models import CategoricalVAE, categorical_vae


def test_default_shapes_and_one_hot_samples():
    vae = categorical_vae(x_mean=torch.full((784,), 0.2))
    x = torch.bernoulli(torch.full((6, 784), 0.2))
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    z = guide_tr.nodes["z1"]["value"]
    assert z.shape == (6, 20, 10)
    assert torch.equal(z.sum(-1), torch.ones(6, 20))
    assert guide_tr.nodes["z1"]["fn"].event_shape == (20, 10)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    model_tr.compute_log_prob()
    assert model_tr.nodes["z1"]["log_prob"].shape == (6,)
    # uniform prior: log p(z) = 20 log(1/10) for every configuration
    assert torch.allclose(model_tr.nodes["z1"]["log_prob"], torch.full((6,), 20 * -2.302585))
    bias = vae.decoder.net[-1].bias
    assert torch.allclose(bias, torch.logit(torch.tensor(0.2)).expand(784))


def test_decoder_is_differentiable_in_relaxed_one_hot():
    vae = CategoricalVAE(x_dim=12, num_latents=3, num_classes=4, hidden=(8,))
    x = torch.bernoulli(torch.full((5, 12), 0.5))
    soft = torch.randn(5, 3, 4).softmax(-1).requires_grad_()
    with pyro.validation_enabled(False):
        tr = poutine.trace(poutine.condition(vae.model, data={"z1": soft})).get_trace(x)
    (grad,) = torch.autograd.grad(tr.nodes["x"]["fn"].log_prob(x).sum(), soft)
    assert grad.abs().sum() > 0


def test_learned_prior_is_a_parameter():
    fixed = CategoricalVAE(x_dim=12, num_latents=3, num_classes=4, hidden=(8,))
    learned = CategoricalVAE(
        x_dim=12, num_latents=3, num_classes=4, hidden=(8,), learn_prior=True, name="cv2"
    )
    assert "decoder.prior_logits" not in dict(fixed.named_parameters())
    assert "decoder.prior_logits" in dict(learned.named_parameters())
    poutine.trace(learned.model).get_trace(torch.zeros(2, 12))
    assert "cv2_decoder$$$prior_logits" in pyro.get_param_store().keys()
