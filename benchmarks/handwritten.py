"""Plain-PyTorch reference implementations of one training step (no Pyro).

These are the yardstick for the speed targets of ``pyro_discrete`` and, because they are
written straight from the formulas in ``shared/ESTIMATORS.md``, an independent check of the
estimators: ``tests/test_benchmarks.py`` compares their mean gradient with the exact gradient
obtained by enumerating every latent configuration of a tiny model.

Models
------
* :class:`LinearSBN`: linear sigmoid belief net with ``n_layers`` stochastic layers of
  ``n_latent`` Bernoulli units (784-200 for one layer), learned prior logits on the top
  layer, Bernoulli likelihood, layer inputs ``2b - 1``, encoder input ``x - x̄``.
* :class:`CategoricalVAE`: one layer of ``n_groups`` one-hot categorical latents with
  ``n_classes`` classes each, linear encoder and decoder, learned prior logits.

Both expose the same small interface (hard pass, relaxed pass, conditional relaxation), so
every estimator below is written once.

Conventions: the step *maximises* the ELBO summed over the minibatch (the loss is
``-sum``, as for a Pyro model under ``pyro.plate`` without subsampling); per-example terms
have shape ``(batch,)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ESTIMATORS: tuple[str, ...] = ("reinforce", "nvil", "rebar", "relax")

# Uniform noise is clamped away from {0, 1} so that logit(u) stays finite in float32.
_EPS = 1e-6


def bernoulli_logmass(value: Tensor, logits: Tensor) -> Tensor:
    """``Σ v·log σ(a) + (1-v)·log σ(-a)`` over the last dim; valid for relaxed ``v``."""
    return (value * logits - F.softplus(logits)).sum(-1)


def _linear(layer: nn.Linear, inp: Tensor, detach: bool) -> Tensor:
    # Relaxed evaluations must not move parameters that the control variate is not
    # estimating a gradient for (the decoder, other layers); detaching them is exact.
    if detach:
        return F.linear(inp, layer.weight.detach(), layer.bias.detach())
    return layer(inp)


@dataclass
class HardPass:
    """One forward pass with discrete samples.

    ``model_terms[k]`` is log p(below_k | latent_k) (below_0 is x), ``prior`` is
    log p(latent_top), ``guide_terms[k]`` is log q(latent_k | below_k); all ``(batch,)``.
    """

    logits: list[Tensor]
    samples: list[Tensor]
    noise: list[Tensor] | None
    model_terms: list[Tensor]
    prior: Tensor
    guide_terms: list[Tensor]

    def elbo(self) -> Tensor:
        return sum(self.model_terms) + self.prior - sum(self.guide_terms)

    def local_signals(self) -> list[Tensor]:
        """Rao-Blackwellised learning signal of each layer (what TraceGraph_ELBO uses).

        Layer k only sees terms that depend on latent_k: log p(below_k | latent_k) and
        every model and guide term of the layers at and above k.
        """
        n = len(self.samples)
        signals: list[Tensor] = [torch.empty(0)] * n
        acc = self.prior
        for k in reversed(range(n)):
            acc = acc + self.model_terms[k] - self.guide_terms[k]
            signals[k] = acc
        return signals


class LatentModel(nn.Module):
    """Interface shared by the benchmark models (see module docstring)."""

    n_layers: int

    def encoder_params(self, k: int) -> list[nn.Parameter]:
        raise NotImplementedError

    def generative_params(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def latent_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def sample_noise(self, batch: int, like: Tensor) -> list[Tensor]:
        shape = (batch, *self.latent_shape())
        return [
            torch.rand(shape, dtype=like.dtype, device=like.device).clamp_(_EPS, 1 - _EPS)
            for _ in range(self.n_layers)
        ]

    def hard_pass(self, x: Tensor, noise: list[Tensor] | None = None) -> HardPass:
        raise NotImplementedError

    def logistic(self, logits: Tensor, u: Tensor) -> Tensor:
        raise NotImplementedError

    def conditional(self, logits: Tensor, z: Tensor, b: Tensor) -> Tensor:
        raise NotImplementedError

    def relax(self, z: Tensor, lam: Tensor) -> Tensor:
        raise NotImplementedError

    def relaxed_elbo(
        self, x: Tensor, hp: HardPass, k: int, z_k: Tensor, lam: Tensor, reps: int
    ) -> Tensor:
        """ELBO with latents < k hard, latent k relaxed from ``z_k``, latents > k relaxed.

        ``z_k`` stacks ``reps`` batches along dim 0 (z and z̃ evaluated in one call).
        Only the parameters of layer k's encoder stay live; the rest is detached.
        """
        raise NotImplementedError


class LinearSBN(LatentModel):
    """Linear sigmoid belief net: ``x - x̄ → h_1 → … → h_L`` (guide), reversed (model)."""

    def __init__(
        self,
        n_visible: int = 784,
        n_latent: int = 200,
        n_layers: int = 1,
        xbar: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.n_visible, self.n_latent, self.n_layers = n_visible, n_latent, n_layers
        if xbar is None:
            xbar = torch.full((n_visible,), 0.5)
        self.register_buffer("xbar", xbar.clone())
        self.enc = nn.ModuleList(
            nn.Linear(n_visible if k == 0 else n_latent, n_latent) for k in range(n_layers)
        )
        # dec[k] parameterises p(below_k | latent_k); dec[0] emits the pixel logits.
        self.dec = nn.ModuleList(
            nn.Linear(n_latent, n_visible if k == 0 else n_latent) for k in range(n_layers)
        )
        self.prior_logits = nn.Parameter(torch.zeros(n_latent))
        with torch.no_grad():
            p = xbar.clamp(0.001, 0.999)
            self.dec[0].bias.copy_(torch.log(p) - torch.log1p(-p))

    def encoder_params(self, k: int) -> list[nn.Parameter]:
        return list(self.enc[k].parameters())

    def generative_params(self) -> list[nn.Parameter]:
        return [*self.dec.parameters(), self.prior_logits]

    def latent_shape(self) -> tuple[int, ...]:
        return (self.n_latent,)

    def hard_pass(self, x: Tensor, noise: list[Tensor] | None = None) -> HardPass:
        inp = x - self.xbar
        logits, samples = [], []
        for k in range(self.n_layers):
            a = self.enc[k](inp)
            if noise is None:
                b = torch.bernoulli(torch.sigmoid(a.detach()))
            else:
                b = (a.detach() + torch.logit(noise[k]) > 0).to(a.dtype)
            logits.append(a)
            samples.append(b)
            inp = 2 * b - 1
        guide_terms = [bernoulli_logmass(b, a) for b, a in zip(samples, logits, strict=True)]
        below = [x, *samples[:-1]]
        model_terms = [
            bernoulli_logmass(below[k], self.dec[k](2 * samples[k] - 1))
            for k in range(self.n_layers)
        ]
        prior = bernoulli_logmass(samples[-1], self.prior_logits.expand_as(samples[-1]))
        return HardPass(logits, samples, noise, model_terms, prior, guide_terms)

    def logistic(self, logits: Tensor, u: Tensor) -> Tensor:
        return logits + torch.logit(u)

    def conditional(self, logits: Tensor, z: Tensor, b: Tensor) -> Tensor:
        # Recover the v that reproduces z (the official REBAR code reuses the noise), hold
        # it fixed, and rebuild z̃ through θ: equal to z in value, but its θ-gradient is
        # the reparameterisation gradient of p(z | b, θ).
        theta = torch.sigmoid(logits)
        with torch.no_grad():
            u = torch.sigmoid(z - logits)
            v = torch.where(b > 0, (u - (1 - theta)) / theta, u / (1 - theta))
            v = v.clamp(_EPS, 1 - _EPS)
        v_cond = torch.where(b > 0, v * theta + (1 - theta), v * (1 - theta))
        v_cond = v_cond.clamp(_EPS, 1 - _EPS)
        return logits + torch.logit(v_cond)

    def relax(self, z: Tensor, lam: Tensor) -> Tensor:
        return torch.sigmoid(z / lam)

    def relaxed_elbo(
        self, x: Tensor, hp: HardPass, k: int, z_k: Tensor, lam: Tensor, reps: int
    ) -> Tensor:
        def rep(t: Tensor) -> Tensor:
            return t.repeat(reps, *([1] * (t.dim() - 1)))

        upstream = sum((hp.model_terms[m] - hp.guide_terms[m]).detach() for m in range(k))
        below = x if k == 0 else hp.samples[k - 1]
        s = self.relax(z_k, lam)
        total = rep(upstream) if k > 0 else torch.zeros_like(z_k[:, 0])
        total = total + bernoulli_logmass(rep(below), _linear(self.dec[k], 2 * s - 1, True))
        total = total - bernoulli_logmass(s, rep(hp.logits[k]))
        for m in range(k + 1, self.n_layers):
            a = _linear(self.enc[m], 2 * s - 1, True)
            s_next = self.relax(a + torch.logit(rep(hp.noise[m])), lam)
            total = total - bernoulli_logmass(s_next, a)
            total = total + bernoulli_logmass(s, _linear(self.dec[m], 2 * s_next - 1, True))
            s = s_next
        return total + bernoulli_logmass(s, self.prior_logits.detach().expand_as(s))


class CategoricalVAE(LatentModel):
    """One layer of ``n_groups`` one-hot categorical latents with ``n_classes`` classes."""

    def __init__(
        self,
        n_visible: int = 784,
        n_groups: int = 10,
        n_classes: int = 10,
        xbar: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.n_visible, self.n_groups, self.n_classes = n_visible, n_groups, n_classes
        self.n_layers = 1
        if xbar is None:
            xbar = torch.full((n_visible,), 0.5)
        self.register_buffer("xbar", xbar.clone())
        self.enc = nn.Linear(n_visible, n_groups * n_classes)
        self.dec = nn.Linear(n_groups * n_classes, n_visible)
        self.prior_logits = nn.Parameter(torch.zeros(n_groups, n_classes))
        with torch.no_grad():
            p = xbar.clamp(0.001, 0.999)
            self.dec.bias.copy_(torch.log(p) - torch.log1p(-p))

    def encoder_params(self, k: int) -> list[nn.Parameter]:
        return list(self.enc.parameters())

    def generative_params(self) -> list[nn.Parameter]:
        return [*self.dec.parameters(), self.prior_logits]

    def latent_shape(self) -> tuple[int, ...]:
        return (self.n_groups, self.n_classes)

    def _log_theta(self, x: Tensor) -> Tensor:
        a = self.enc(x - self.xbar).view(-1, self.n_groups, self.n_classes)
        return torch.log_softmax(a, -1)

    def _terms(self, x: Tensor, value: Tensor, log_theta: Tensor, detach: bool) -> Tensor:
        # Σ_k v_k log θ_k is the discrete log-mass at a relaxed value (torch's
        # OneHotCategorical.log_prob takes an argmax and has no gradient in v).
        prior = self.prior_logits.detach() if detach else self.prior_logits
        log_prior = torch.log_softmax(prior, -1)
        flat = value.reshape(value.shape[0], -1)
        lik = bernoulli_logmass(x, _linear(self.dec, flat, detach))
        return lik + (value * (log_prior - log_theta)).sum((-1, -2))

    def hard_pass(self, x: Tensor, noise: list[Tensor] | None = None) -> HardPass:
        log_theta = self._log_theta(x)
        if noise is None:
            idx = torch.multinomial(log_theta.detach().exp().view(-1, self.n_classes), 1)
            idx = idx.view(-1, self.n_groups)
        else:
            idx = self.logistic(log_theta.detach(), noise[0]).argmax(-1)
        b = F.one_hot(idx, self.n_classes).to(x.dtype)
        lik = bernoulli_logmass(x, self.dec(b.reshape(b.shape[0], -1)))
        prior = (b * torch.log_softmax(self.prior_logits, -1)).sum((-1, -2))
        guide = (b * log_theta).sum((-1, -2))
        return HardPass([log_theta], [b], noise, [lik], prior, [guide])

    def logistic(self, logits: Tensor, u: Tensor) -> Tensor:
        # Gumbel-max: z_k = log θ_k - log(-log u_k).
        return logits - torch.log(-torch.log(u))

    def conditional(self, logits: Tensor, z: Tensor, b: Tensor) -> Tensor:
        # z̃_b = -log(-log v_b), z̃_i = -log(-log(v_i)/θ_i - log v_b); in log space:
        # with E = -log v,  z̃_i = -logaddexp(log E_i - log θ_i, log E_b). E is recovered from
        # z (noise reuse) and held fixed, so z̃ == z in value.
        with torch.no_grad():
            z_b = (z * b).sum(-1, keepdim=True)
            log_e_b = -z_b
            gap = (z - z_b).clamp(max=0.0)
            log_e = logits - z + torch.log((-torch.expm1(gap)).clamp(min=1e-30))
            log_e = torch.where(b > 0, torch.zeros_like(log_e), log_e)
        z_other = -torch.logaddexp(log_e - logits, log_e_b)
        return torch.where(b > 0, z_b.expand_as(z), z_other)

    def relax(self, z: Tensor, lam: Tensor) -> Tensor:
        return torch.softmax(z / lam, -1)

    def relaxed_elbo(
        self, x: Tensor, hp: HardPass, k: int, z_k: Tensor, lam: Tensor, reps: int
    ) -> Tensor:
        s = self.relax(z_k, lam)
        log_theta = hp.logits[0].repeat(reps, 1, 1)
        return self._terms(x.repeat(reps, 1), s, log_theta, detach=True)


# --------------------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------------------


class Step:
    """One training step: ``estimate`` fills ``.grad``; ``step`` also applies Adam."""

    name = "base"

    def __init__(self, model: LatentModel, lr: float = 1e-3) -> None:
        self.model = model
        self.lr = lr
        self.optim = torch.optim.Adam(self.trainable(), lr=lr)

    def trainable(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def estimate(self, x: Tensor) -> Tensor:
        """Set ``.grad`` of every trainable parameter to -ĝ; return the hard ELBO (B,)."""
        raise NotImplementedError

    def step(self, x: Tensor) -> Tensor:
        self.optim.zero_grad(set_to_none=True)
        elbo = self.estimate(x)
        self.optim.step()
        return elbo.detach()


class Reinforce(Step):
    """Score function with Rao-Blackwellised per-layer signals and no baseline."""

    name = "reinforce"

    def estimate(self, x: Tensor) -> Tensor:
        hp = self.model.hard_pass(x)
        elbo = hp.elbo()
        surrogate = elbo.sum() + sum(
            (sig.detach() * q).sum()
            for sig, q in zip(hp.local_signals(), hp.guide_terms, strict=True)
        )
        (-surrogate).backward()
        return elbo


class _BaselineNet(nn.Module):
    """NVIL's input-dependent baseline: one hidden tanh layer of 100 units."""

    def __init__(self, n_in: int, hidden: int = 100) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


class NVIL(Step):
    """Mnih & Gregor (2014): input-dependent baseline per layer + signal normalisation.

    Coefficient of ∂ log q_k: (ℓ_k - c_k(x) - m_k) / max(1, √v_k). m_k, v_k are EMAs
    (α = 0.8) of the batch mean / variance of ℓ_k - c_k(x). They are updated *after* being
    used, so that given the state the score term's coefficient does not depend on the
    current samples (the estimate is then unbiased whenever v_k ≤ 1, and a rescaling of the
    score term otherwise, as in the paper).
    """

    name = "nvil"

    def __init__(self, model: LatentModel, lr: float = 1e-3, alpha: float = 0.8) -> None:
        n_in = getattr(model, "n_visible", 784)
        self.baselines = nn.ModuleList(_BaselineNet(n_in) for _ in range(model.n_layers))
        self.baselines.to(next(model.parameters()).device)
        self.alpha = alpha
        dev = next(model.parameters()).device
        self.mean = torch.zeros(model.n_layers, device=dev)
        self.var = torch.zeros(model.n_layers, device=dev)
        super().__init__(model, lr)

    def trainable(self) -> list[nn.Parameter]:
        return [*self.model.parameters(), *self.baselines.parameters()]

    def estimate(self, x: Tensor, update_stats: bool = True) -> Tensor:
        hp = self.model.hard_pass(x)
        elbo = hp.elbo()
        xin = x - self.model.xbar
        surrogate = elbo.sum()
        baseline_loss = x.new_zeros(())
        residuals = []
        for k, (sig, q) in enumerate(zip(hp.local_signals(), hp.guide_terms, strict=True)):
            c = self.baselines[k](xin)
            resid = sig.detach() - c.detach()
            coef = (resid - self.mean[k]) / self.var[k].sqrt().clamp(min=1.0)
            surrogate = surrogate + (coef * q).sum()
            baseline_loss = baseline_loss + 0.5 * ((sig.detach() - self.mean[k] - c) ** 2).sum()
            residuals.append(resid)
        (baseline_loss - surrogate).backward()
        if update_stats:
            with torch.no_grad():
                r = torch.stack(residuals)
                a = self.alpha
                self.mean.mul_(a).add_((1 - a) * r.mean(1))
                if r.shape[1] > 1:
                    self.var.mul_(a).add_((1 - a) * r.var(1))
        return elbo


class _ResidualNet(nn.Module):
    """RELAX's r_ρ: a ReLU MLP on one layer's [z, logits] (logits detached).

    The logits carry the encoder's input and the upstream samples, so r_ρ can adapt to the
    data point as the official code's [x - x̄, z, b_<l] input does; this matches
    ``pyro_discrete``'s default surrogate network (two 200-unit layers), which keeps the
    timing comparison like for like. A fixed function of z for the θ-gradient, so RELAX
    stays unbiased.
    """

    def __init__(self, n_in: int, hidden: Sequence[int] = (200, 200)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = 2 * n_in
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, logits: Tensor) -> Tensor:
        feats = torch.cat([z.reshape(z.shape[0], -1), logits.reshape(z.shape[0], -1)], -1)
        return self.net(feats).squeeze(-1)


@dataclass
class RebarEstimate:
    """Everything the exactness and variance-gradient tests need from one REBAR step."""

    elbo: Tensor
    enc_grads: list[list[Tensor]]  # ĝ per layer per encoder parameter (maximisation sign)
    gen_grads: list[Tensor]
    cv_grads: list[Tensor]  # ∂ Σĝ² / ∂φ, aligned with Rebar.cv_params()
    variance_proxy: Tensor


class Rebar(Step):
    """REBAR (Tucker et al. 2017); ``use_residual=True`` gives RELAX (Grathwohl et al. 2018).

    ĝ_k = [f(b) - c(z̃_k)] ∂ log q_k(b_k) + ∂ c(z_k) - ∂ c(z̃_k) + ∂ f(b)|direct for each
    stochastic layer k, with c(z) = η_k f(σ_λ(z)) (+ r_ρk(z, a_k) for RELAX), layers < k hard
    and layers > k relaxed (1 + 2L evaluations of f). η_k = 2σ(w_k) per layer, one shared
    log λ; φ = {w, log λ, ρ} minimises Σ ĝ² (single-sample E[ĝ²]) with a double backward.
    The generative parameters receive ∂ f(b) only.

    ``variance_of`` picks which ĝ is squared:

    * ``"logits"`` (default, as ``pyro_discrete`` does): ĝ with respect to each layer's
      logits, per data point, ĝ_a = [f(b) - c(z̃)] ∂_a log q(b) + ∂_a c(z) - ∂_a c(z̃).
      It is formed as a tensor and the parameters then receive Σ ĝ_a·a through one
      ordinary backward, so the coefficient, which must be constant in θ, can keep its
      φ-graph.
    * ``"params"``: ĝ with respect to the encoder's parameters, summed over the batch.
      The coefficient enters the surrogate as a detached leaf; ∂(Σĝ²)/∂leaf is pushed
      through the graph of c(z̃) to φ alone (a vector-Jacobian product in which z̃ is held
      fixed), the "by hand" λ-term of the official code.

    Both estimate the same ĝ for θ; they differ in the control-variate objective and cost.
    """

    name = "rebar"

    def __init__(
        self,
        model: LatentModel,
        lr: float = 1e-3,
        use_residual: bool = False,
        eta0: float = 1.0,
        lam0: float = 0.5,
        residual_hidden: Sequence[int] = (200, 200),
        cv_lr_scale: float = 10.0,
        stop_coefficient_grad: bool = True,
        variance_of: str = "logits",
    ) -> None:
        dev = next(model.parameters()).device
        w0 = math.log(eta0 / (2 - eta0))  # η = 2σ(w)
        self.eta_w = nn.Parameter(torch.full((model.n_layers,), w0, device=dev))
        self.log_lam = nn.Parameter(torch.tensor(math.log(lam0), device=dev))
        self.use_residual = use_residual
        # Only for the negative-control test: False reproduces the known defect of letting
        # θ-gradients flow through [f(b) - c(z̃)].
        self.stop_coefficient_grad = stop_coefficient_grad
        if variance_of not in ("logits", "params"):
            raise ValueError(f"variance_of must be 'logits' or 'params', got {variance_of!r}")
        self.variance_of = variance_of
        self.residuals = nn.ModuleList()
        if use_residual:
            n_in = math.prod(model.latent_shape())
            self.residuals = nn.ModuleList(
                _ResidualNet(n_in, residual_hidden) for _ in range(model.n_layers)
            ).to(dev)
        super().__init__(model, lr)
        self.cv_optim = torch.optim.Adam(
            self.cv_params(), lr=lr * cv_lr_scale, betas=(0.9, 0.99999)
        )
        if use_residual:
            self.name = "relax"

    def trainable(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def cv_params(self) -> list[nn.Parameter]:
        return [self.eta_w, self.log_lam, *self.residuals.parameters()]

    def eta(self) -> Tensor:
        return 2 * torch.sigmoid(self.eta_w)

    def _relaxed(
        self, x: Tensor, hp: HardPass, k: int, lam: Tensor, eta: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(c(z_k), c(z̃_k), f(σ_λ(z̃_k)))`` for layer k, both paths in one stacked call."""
        model, batch = self.model, x.shape[0]
        a = hp.logits[k]
        z = model.logistic(a, hp.noise[k])
        z_cond = model.conditional(a, z, hp.samples[k])
        zz = torch.cat([z, z_cond])
        f_relaxed = model.relaxed_elbo(x, hp, k, zz, lam, reps=2)
        c = eta[k] * f_relaxed
        if self.use_residual:
            c = c + self.residuals[k](zz, torch.cat([a.detach(), a.detach()]))
        return c[:batch], c[batch:], f_relaxed[batch:]

    def compute(self, x: Tensor, noise: list[Tensor] | None = None) -> RebarEstimate:
        model = self.model
        if noise is None:
            noise = model.sample_noise(x.shape[0], x)
        hp = model.hard_pass(x, noise)
        enc_params = [model.encoder_params(k) for k in range(model.n_layers)]
        flat_enc = [p for ps in enc_params for p in ps]
        gen_params = model.generative_params()
        if self.variance_of == "logits":
            g_enc, g_gen, cv_grads, variance = self._compute_logits(x, hp, flat_enc, gen_params)
        else:
            g_enc, g_gen, cv_grads, variance = self._compute_params(x, hp, flat_enc, gen_params)
        enc_grads: list[list[Tensor]] = []
        i = 0
        for ps in enc_params:
            enc_grads.append([g.detach() for g in g_enc[i : i + len(ps)]])
            i += len(ps)
        gen_grads = [g.detach() for g in g_gen]
        return RebarEstimate(hp.elbo().detach(), enc_grads, gen_grads, cv_grads, variance)

    def _compute_logits(
        self, x: Tensor, hp: HardPass, flat_enc: list[Tensor], gen_params: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], Tensor]:
        # ĝ is formed as a tensor shaped like each layer's logits a_k; the parameters then
        # receive Σ ĝ_k·a_k through one ordinary backward. ĝ_k is never differentiated in
        # θ, so the coefficient may keep its graph, which φ needs: no leaf trick.
        elbo = hp.elbo()
        f_b = elbo.detach()
        lam, eta = self.log_lam.exp(), self.eta()
        surrogate = elbo.sum()  # the direct term ∂f(b) for every parameter
        variance = x.new_zeros(())
        for k in range(self.model.n_layers):
            a = hp.logits[k]
            c_z, c_zc, _ = self._relaxed(x, hp, k, lam, eta)
            (score,) = torch.autograd.grad(hp.guide_terms[k].sum(), a, retain_graph=True)
            (g_cv,) = torch.autograd.grad((c_z - c_zc).sum(), a, create_graph=True)
            shape = (-1,) + (1,) * (a.dim() - 1)
            g_hat = (f_b - c_zc).view(shape) * score + g_cv
            variance = variance + (g_hat**2).sum()
            if self.stop_coefficient_grad:
                surrogate = surrogate + (g_hat.detach() * a).sum()
            else:
                # The known defect, for the negative-control test: θ-gradients of c(z̃)
                # leak through the coefficient.
                leak = ((f_b - c_zc) * hp.guide_terms[k]).sum() + (c_z - c_zc).sum()
                surrogate = surrogate + leak
        cv_params = self.cv_params()
        cv = torch.autograd.grad(variance, cv_params, retain_graph=True, allow_unused=True)
        cv_grads = [
            g if g is not None else torch.zeros_like(p) for g, p in zip(cv, cv_params, strict=True)
        ]
        grads = torch.autograd.grad(surrogate, flat_enc + gen_params)
        n = len(flat_enc)
        return list(grads[:n]), list(grads[n:]), cv_grads, variance.detach()

    def _compute_params(
        self, x: Tensor, hp: HardPass, flat_enc: list[Tensor], gen_params: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], Tensor]:
        elbo = hp.elbo()
        f_b = elbo.detach()
        lam, eta = self.log_lam.exp(), self.eta()
        plain = elbo.sum() + sum((f_b * q).sum() for q in hp.guide_terms)
        cv = x.new_zeros(())
        coef_leaves: list[Tensor] = []
        coef_sources: list[Tensor] = []
        for k in range(self.model.n_layers):
            c_z, c_zc, _ = self._relaxed(x, hp, k, lam, eta)
            if self.stop_coefficient_grad:
                # ∂ĝ/∂θ must not see c(z̃) in the coefficient, ∂ĝ/∂φ must: a detached leaf
                # stands in for it here, and is chained to φ below.
                leaf = c_zc.detach().requires_grad_()
                coef_leaves.append(leaf)
                coef_sources.append(c_zc)
                coef = leaf
            else:
                coef = c_zc
            cv = cv + (-coef * hp.guide_terms[k] + c_z - c_zc).sum()

        # The create_graph pass goes first: it retains the shared encoder graph, which
        # the plain pass may then free.
        g_cv = torch.autograd.grad(cv, flat_enc, create_graph=True)
        g_plain = torch.autograd.grad(plain, flat_enc + gen_params)
        g_hat = [gp + gc for gp, gc in zip(g_plain[: len(flat_enc)], g_cv, strict=True)]
        variance = sum((g**2).sum() for g in g_hat)

        cv_params = self.cv_params()
        grads = torch.autograd.grad(
            variance, cv_params + coef_leaves, retain_graph=True, allow_unused=True
        )
        direct = [
            g if g is not None else torch.zeros_like(p)
            for g, p in zip(grads[: len(cv_params)], cv_params, strict=True)
        ]
        leaf_grads = [
            g if g is not None else torch.zeros_like(leaf)
            for g, leaf in zip(grads[len(cv_params) :], coef_leaves, strict=True)
        ]
        # Push ∂V/∂coefficient through c(z̃)'s graph to φ; z̃ does not depend on φ, so
        # autograd holds it fixed, exactly the partial derivative the coefficient needs.
        chained: tuple[Tensor | None, ...] = (None,) * len(cv_params)
        if coef_sources:
            chained = torch.autograd.grad(
                coef_sources, cv_params, grad_outputs=leaf_grads, allow_unused=True
            )
        cv_grads = [d + c if c is not None else d for d, c in zip(direct, chained, strict=True)]
        n = len(flat_enc)
        return list(g_hat), list(g_plain[n:]), cv_grads, variance.detach()

    def estimate(self, x: Tensor) -> Tensor:
        est = self.compute(x)
        model = self.model
        for k in range(model.n_layers):
            for p, g in zip(model.encoder_params(k), est.enc_grads[k], strict=True):
                p.grad = -g
        for p, g in zip(model.generative_params(), est.gen_grads, strict=True):
            p.grad = -g
        for p, g in zip(self.cv_params(), est.cv_grads, strict=True):
            p.grad = g
        return est.elbo

    def step(self, x: Tensor) -> Tensor:
        self.optim.zero_grad(set_to_none=True)
        self.cv_optim.zero_grad(set_to_none=True)
        elbo = self.estimate(x)
        self.optim.step()
        self.cv_optim.step()
        return elbo


def make_step(name: str, model: LatentModel, lr: float = 1e-3) -> Step:
    """Hand-written step for ``name`` in :data:`ESTIMATORS`."""
    if name == "reinforce":
        return Reinforce(model, lr)
    if name == "nvil":
        return NVIL(model, lr)
    if name == "rebar":
        return Rebar(model, lr)
    if name == "relax":
        return Rebar(model, lr, use_residual=True)
    raise ValueError(f"unknown estimator {name!r}; expected one of {ESTIMATORS}")


# --------------------------------------------------------------------------------------
# Exact gradients by enumeration (tiny models only)
# --------------------------------------------------------------------------------------


def _configs(model: LatentModel) -> Tensor:
    """Every joint latent configuration, shape (n_configs, n_layers, *latent_shape)."""
    if isinstance(model, LinearSBN):
        n = model.n_latent * model.n_layers
        if n > 16:
            raise ValueError("too many latent configurations to enumerate")
        codes = torch.arange(2**n)
        bits = (codes[:, None] >> torch.arange(n)) & 1
        return bits.view(-1, model.n_layers, model.n_latent).float()
    if isinstance(model, CategoricalVAE):
        g, c = model.n_groups, model.n_classes
        if c**g > 100_000:
            raise ValueError("too many latent configurations to enumerate")
        idx = torch.cartesian_prod(*[torch.arange(c)] * g).view(-1, g)
        return F.one_hot(idx, c).float().unsqueeze(1)
    raise TypeError(type(model).__name__)


def exact_elbo(model: LatentModel, x: Tensor) -> Tensor:
    """Σ_n Σ_b q(b|x_n) [log p(x_n, b) - log q(b|x_n)], differentiable in every parameter."""
    configs = _configs(model).to(x)
    total = x.new_zeros(())
    for xn in x:
        if isinstance(model, LinearSBN):
            inp = (xn - model.xbar).expand(configs.shape[0], -1)
            log_q = x.new_zeros(configs.shape[0])
            log_p = x.new_zeros(configs.shape[0])
            below = xn.expand(configs.shape[0], -1)
            for k in range(model.n_layers):
                b = configs[:, k]
                log_q = log_q + bernoulli_logmass(b, model.enc[k](inp))
                log_p = log_p + bernoulli_logmass(below, model.dec[k](2 * b - 1))
                inp, below = 2 * b - 1, b
            log_p = log_p + bernoulli_logmass(below, model.prior_logits.expand_as(below))
        else:
            b = configs[:, 0]
            log_theta = model._log_theta(xn[None]).expand_as(b)
            log_q = (b * log_theta).sum((-1, -2))
            log_p = model._terms(xn.expand(b.shape[0], -1), b, log_theta, detach=False) + log_q
        total = total + (log_q.exp() * (log_p - log_q)).sum()
    return total


def exact_gradient(model: LatentModel, x: Tensor) -> list[Tensor]:
    """∂ exact ELBO / ∂ every model parameter, in ``model.parameters()`` order."""
    params = list(model.parameters())
    return [g.detach() for g in torch.autograd.grad(exact_elbo(model, x), params)]
