"""The RELAX paper's toy problem, written with the library's pure estimator functions.

Minimise E[(b - t)^2], b ~ Bernoulli(sigmoid(theta)), t = 0.499 (Grathwohl et al. 2018,
Figure 1): the gradient signal is 1 - 2t = 0.002 times sigmoid'(theta), buried in noise.
RELAX learns a surrogate that cancels the noise and drives theta down; REINFORCE and REBAR
barely move on the same budget.
"""

from __future__ import annotations

import math

import torch

from pyro_discrete import estimators as E
from pyro_discrete.distributions import functional as F

TARGET = 0.499
STEPS = 1000
LR = 0.01  # the paper's; control variates get 10x, as in the official code
SEEDS = 16  # independent runs, vectorised


def f(b: torch.Tensor) -> torch.Tensor:
    return (b - TARGET) ** 2


def run(method: str, seed: int = 0) -> torch.Tensor:
    """Train theta (one per run) with Adam; return sigmoid(theta) at the end."""
    torch.manual_seed(seed)
    theta = torch.zeros(SEEDS, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=LR)
    eta = torch.tensor(1.0, requires_grad=True)
    log_temp = torch.tensor(math.log(0.5), requires_grad=True)
    surrogate = torch.nn.Sequential(torch.nn.Linear(1, 10), torch.nn.Tanh(), torch.nn.Linear(10, 1))
    cv_params = [eta, log_temp] + (list(surrogate.parameters()) if method == "relax" else [])
    cv_opt = torch.optim.Adam(cv_params, lr=10 * LR)

    def c(z):
        temp = log_temp.exp()
        out = eta * f(F.relax_bernoulli(z, temp))
        if method == "relax":
            out = out + surrogate((2 * torch.sigmoid(z) - 1).unsqueeze(-1)).squeeze(-1)
        return out

    for _ in range(STEPS):
        u = F.uniform_like(theta)
        z = F.logistic_sample(theta, u)
        b = F.heaviside(z).detach()
        score = E.logit_score(theta, b, one_hot=False)
        if method == "reinforce":
            grad = f(b) * score.detach()
        else:
            v = F.logistic_conditional_noise(theta, z, b)
            z_tilde = F.logistic_conditional_sample(theta, b, v)
            grad = E.relax_logit_gradient(theta, score, f(b), c(z), c(z_tilde), create_graph=True)
            cv_opt.zero_grad()
            variance = E.gradient_variance_loss(grad)
            cv_grads = torch.autograd.grad(variance, cv_params, allow_unused=True)
            for p, g in zip(cv_params, cv_grads, strict=True):
                p.grad = None if g is None else g
            cv_opt.step()
        opt.zero_grad()
        theta.grad = grad.detach()
        opt.step()
    return torch.sigmoid(theta.detach())


def test_relax_solves_the_toy_problem_where_reinforce_and_rebar_stall():
    outcomes = {method: run(method) for method in ("reinforce", "rebar", "relax")}
    for method, probs in outcomes.items():
        print(
            f"{method:9s} sigmoid(theta) after {STEPS} steps: mean {probs.mean():.3f}, "
            f"runs below 0.5: {(probs < 0.5).sum().item()}/{SEEDS}"
        )
    relax = outcomes["relax"]
    assert (relax < 0.5).all(), relax  # every run moved to the right side
    for other in ("reinforce", "rebar"):
        # RELAX ends closer to the optimum (theta -> -inf) than the others on this budget
        assert relax.mean() < outcomes[other].mean() - 0.03
        assert (relax < 0.5).sum() > (outcomes[other] < 0.5).sum()
