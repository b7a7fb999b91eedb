import pyro
import pytest
import torch


class TinySBN:
    """A 3-bit, 4-pixel belief net small enough to enumerate: exact log p(x), ELBO, gradients."""

    def __init__(self, seed=0, num_data=6):
        from pyro_discrete.models import SigmoidBeliefNet

        torch.manual_seed(seed)
        self.vae = SigmoidBeliefNet(x_dim=4, latent_dims=(3,), name="tiny")
        with torch.no_grad():
            # a sharp decoder and a vague, mismatched guide: a visible ELBO gap, but a guide
            # that still covers every configuration (importance weights of moderate spread)
            for p in self.vae.decoder.parameters():
                p.normal_(0, 1.5)
            for p in self.vae.encoder.parameters():
                p.normal_(0, 0.6)
        self.x = torch.bernoulli(torch.full((num_data, 4), 0.5))
        bits = torch.arange(8).unsqueeze(-1).bitwise_right_shift(torch.arange(3)) & 1
        self.configs = bits.float()  # (8, 3)

    def joint_and_guide(self, x=None):
        """log p(x, z) and log q(z | x) for every configuration z: two (8, N) tensors."""
        import pyro.poutine as poutine

        x = self.x if x is None else x
        log_p, log_q = [], []
        for z in self.configs:
            data = {"z1": z.expand(x.shape[0], 3)}
            mt = poutine.trace(poutine.condition(self.vae.model, data)).get_trace(x)
            gt = poutine.trace(poutine.condition(self.vae.guide, data)).get_trace(x)
            mt.compute_log_prob()
            gt.compute_log_prob()
            log_p.append(mt.nodes["z1"]["log_prob"] + mt.nodes["x"]["log_prob"])
            log_q.append(gt.nodes["z1"]["log_prob"])
        return torch.stack(log_p), torch.stack(log_q)

    def log_marginal(self):
        with torch.no_grad():
            return self.joint_and_guide()[0].logsumexp(0)  # (N,)

    def exact_elbo(self):
        log_p, log_q = self.joint_and_guide()
        return (log_q.exp() * (log_p - log_q)).sum(0)  # (N,)

    def exact_loss_grads(self):
        """Gradient of the loss -sum_n ELBO_n w.r.t. the guide's param-store parameters."""
        from pyro_discrete.diagnostics import guide_param_names

        names = guide_param_names(self.vae.guide, self.x)
        store = dict(pyro.get_param_store().named_parameters())
        grads = torch.autograd.grad(-self.exact_elbo().sum(), [store[n] for n in names])
        return dict(zip(names, grads, strict=True))


@pytest.fixture
def tiny():
    return TinySBN()
