r"""The RELAX paper's toy problem: minimise E[(b - 0.499)^2], b ~ Bernoulli(sigmoid(theta)).

The exact gradient with respect to the logit is (1 - 2t) sigma'(theta) = 0.002 sigma'(theta):
a tiny signal under a lot of sampling noise. The optimum is sigma(theta) -> 0 (b = 0 costs
0.249001, b = 1 costs 0.251001). Following Grathwohl et al. (2018), the estimators are run
with Adam (lr 0.01) from theta = 0, one sample per step:

- REINFORCE: f(b) d/dtheta log q(b) (no baseline, as in the paper);
- REBAR: control variate eta f(sigma_lambda(z)), with eta and the temperature lambda tuned
  online to minimise the gradient's variance;
- RELAX with a learned surrogate only (the black-box form, ``relax`` with
  ``black_box=True`` in the library): c_phi a 10-unit tanh network of 2 sigma(z) - 1, no
  f(sigma(z)) term, its weights tuned the same way;
- the expectation model: a 10-unit tanh network of theta regressed (mean-squared error) on
  the REINFORCE gradients above; its prediction is the gradient theta follows.

Built directly on the pure functions of ``pyro_discrete.estimators`` and
``pyro_discrete.distributions.functional`` (no Pyro model needed for a one-parameter
problem). Prints sigma(theta) along the way and, at the end, the log-variance of each
estimator's last gradients; ``--plot FILE`` saves sigma(theta) and the log-variance against
the step (variance of the estimates over a sliding window of 100 steps, each estimator's
own sequence, so that the expectation model's prediction, which a fixed network makes
deterministic, is measured the same way as the others).

    python examples/relax_toy.py --plot docs/_static/relax_toy.png
    python examples/relax_toy.py --smoke      # a few seconds, for tests
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from pyro_discrete.distributions import functional as F
from pyro_discrete.estimators import (
    expectation_model_loss,
    gradient_variance_loss,
    logit_score,
    rebar_logit_gradient,
    relax_logit_gradient,
    score_function_logit_gradient,
)

TARGET = 0.499


def f(b: torch.Tensor) -> torch.Tensor:
    return (b - TARGET) ** 2


class Estimator:
    """One gradient estimator for the toy's logit, with its own control-variate state."""

    name = "reinforce"

    def __init__(self) -> None:
        self.cv_params: list[torch.Tensor] = []

    def gradient(self, theta: torch.Tensor) -> torch.Tensor:
        b = torch.bernoulli(torch.sigmoid(theta.detach()))
        return f(b) * logit_score(theta, b, one_hot=False).detach()


class Rebar(Estimator):
    name = "rebar"

    def __init__(self) -> None:
        self.log_eta = torch.zeros((), requires_grad=True)  # eta_0 = 1
        self.log_temperature = torch.tensor(math.log(0.5), requires_grad=True)
        self.cv_params = [self.log_eta, self.log_temperature]

    def samples(self, theta):
        z = F.logistic_sample(theta, F.uniform_like(theta))
        b = F.heaviside(z)
        # the official code's noise re-use: z~ equals z but carries p(z | b)'s gradient
        z_tilde = F.logistic_conditional_sample(
            theta, b, F.logistic_conditional_noise(theta, z, b)
        )
        return z, b, z_tilde

    def gradient(self, theta):
        z, b, z_tilde = self.samples(theta)
        lam = self.log_temperature.exp()
        return rebar_logit_gradient(
            theta, logit_score(theta, b, one_hot=False), f(b),
            f(F.relax_bernoulli(z, lam)), f(F.relax_bernoulli(z_tilde, lam)),
            self.log_eta.exp(), create_graph=True,
        )


class Relax(Rebar):
    name = "relax"

    def __init__(self) -> None:
        self.surrogate = nn.Sequential(nn.Linear(1, 10), nn.Tanh(), nn.Linear(10, 1))
        self.cv_params = list(self.surrogate.parameters())

    def c(self, z):
        return self.surrogate((2 * torch.sigmoid(z) - 1).reshape(-1, 1)).reshape(z.shape)

    def gradient(self, theta):
        z, b, z_tilde = self.samples(theta)
        return relax_logit_gradient(
            theta, logit_score(theta, b, one_hot=False), f(b), self.c(z), self.c(z_tilde),
            create_graph=True,
        )


class ExpectationModel(Estimator):
    name = "expectation"

    def __init__(self) -> None:
        self.network = nn.Sequential(nn.Linear(1, 10), nn.Tanh(), nn.Linear(10, 1))
        self.cv_params = list(self.network.parameters())
        self.fit_loss: torch.Tensor | None = None

    def gradient(self, theta):
        b = torch.bernoulli(torch.sigmoid(theta.detach()))
        target = score_function_logit_gradient(logit_score(theta.detach(), b, one_hot=False), f(b))
        prediction = self.network(theta.detach().reshape(1, 1)).reshape(theta.shape)
        self.fit_loss = expectation_model_loss(prediction, target)
        return prediction

    def control_variate_loss(self, g):
        return self.fit_loss


def run(estimator: Estimator, steps: int, lr: float, seed: int, report_every: int):
    torch.manual_seed(seed)
    theta = torch.zeros((), requires_grad=True)
    optim = torch.optim.Adam([theta], lr=lr)
    cv_optim = torch.optim.Adam(estimator.cv_params, lr=lr) if estimator.cv_params else None
    probs, grads = [], []
    for step in range(1, steps + 1):
        g = estimator.gradient(theta)
        if cv_optim is not None:
            cv_optim.zero_grad()
            if isinstance(estimator, ExpectationModel):
                estimator.fit_loss.backward(inputs=estimator.cv_params)
            else:
                # minimise the single-sample E[g^2]: its gradient is that of Var[g] (unbiased g)
                gradient_variance_loss(g).backward(inputs=estimator.cv_params)
            cv_optim.step()
        optim.zero_grad()
        theta.grad = g.detach().reshape(theta.shape)
        optim.step()
        probs.append(torch.sigmoid(theta).item())
        grads.append(g.item())
        if step % report_every == 0:
            print(f"  {estimator.name:>11s} step {step:5d}: sigma(theta) = {probs[-1]:.3f}")
    return theta.detach(), probs, grads


def windowed_log_variance(grads: list[float], window: int = 100) -> list[float]:
    """log of the variance of the estimates over the last ``window`` steps, at each step."""
    g = torch.tensor(grads, dtype=torch.float64)
    if len(g) < window:
        return []
    var = g.unfold(0, window, 1).var(1)
    return var.clamp(min=1e-300).log().tolist()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="save sigma(theta) curves to this PNG")
    parser.add_argument("--smoke", action="store_true", help="a few seconds' run")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps = 200
    torch.set_num_threads(1)

    curves, variances, summary = {}, {}, []
    window = 100 if not args.smoke else 50
    for estimator in (Estimator(), Rebar(), Relax(), ExpectationModel()):
        theta, probs, grads = run(
            estimator, args.steps, args.lr, args.seed, max(args.steps // 5, 1)
        )
        curves[estimator.name] = probs
        variances[estimator.name] = windowed_log_variance(grads, window)
        exact = (1 - 2 * TARGET) * torch.sigmoid(theta) * torch.sigmoid(-theta)
        last = torch.tensor(grads[-window:], dtype=torch.float64)
        summary.append((estimator.name, probs[-1], math.log(last.var().item()), exact.item()))
    print(f"\nafter {args.steps} steps (optimum: sigma(theta) -> 0)")
    print(f"{'estimator':>11s} {'sigma(theta)':>13s} {'log Var[g]':>11s} {'exact grad':>11s}")
    for name, p, logvar, exact in summary:
        print(f"{name:>11s} {p:13.3f} {logvar:11.2f} {exact:11.5f}")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5.5), sharex=True)
        for name, probs in curves.items():
            top.plot(probs, label=name)
            lv = variances[name]
            bottom.plot(range(window, window + len(lv)), lv, label=name, lw=0.8)
        top.set_ylabel(r"$\sigma(\theta)$")
        top.set_title(f"minimise E[(b - {TARGET})²]")
        top.legend()
        bottom.set_xlabel("step")
        bottom.set_ylabel(f"log Var[g] ({window}-step window)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=80)
        print(f"plot saved to {args.plot}")

if __name__ == "__main__":
    main()
