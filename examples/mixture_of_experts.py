"""Mixture of experts: exact enumeration (TraceEnum_ELBO) against sampling estimators.

Part 1, one routing decision per data point with K = 4 experts: Pyro's ``TraceEnum_ELBO``
sums over the K experts exactly, so it has no gradient noise at all, at a step cost close to
a sampling estimator's; the sampling estimators (``DiscreteELBO``) are trained for the same
number of steps from the same start and scored by the exact held-out log-likelihood, on a
few data sets (mixture likelihoods are multimodal: any single run can end in a poor optimum,
with or without gradient noise).

Part 2, where sampling wins: M routing decisions per data point (the prediction averages
the M chosen experts). Exact enumeration must sum over all K^M joint configurations, so its
step time and memory grow exponentially in M, while a sampling estimator's step costs
O(M K). The script times one step of each as M grows, then trains both for the same
wall-clock budget at the largest M and compares held-out importance-weighted bounds.

    python examples/mixture_of_experts.py
    python examples/mixture_of_experts.py --smoke      # a few seconds, for tests
"""

from __future__ import annotations

import argparse
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.ops.indexing import Vindex
from pyro.optim import Adam
from torch import nn

from pyro_discrete.diagnostics import importance_weighted_bound
from pyro_discrete.infer import DiscreteELBO
from pyro_discrete.models import (
    EnumeratedMixtureOfExperts,
    MixtureOfExperts,
    synthetic_moe_data,
)


def sampling_elbo(name: str) -> DiscreteELBO:
    particles = 2 if name in ("rloo", "vimco") else 1
    return DiscreteELBO(estimator=name, num_particles=particles, max_plate_nesting=1)


def train(model, guide, loss, data, steps=None, seconds=None, lr=0.02, batch_size=100, seed=0):
    """SVI on minibatches of ``data`` for a number of steps or of seconds; returns steps done."""
    x, y = data
    svi = SVI(model, guide, Adam({"lr": lr}), loss=loss)
    g = torch.Generator().manual_seed(seed)
    start, step = time.perf_counter(), 0
    while (steps is None or step < steps) and (
        seconds is None or time.perf_counter() - start < seconds
    ):
        rows = torch.randint(x.shape[0], (batch_size,), generator=g)
        svi.step(x[rows], y[rows])
        step += 1
    return step


def part1(args) -> None:
    k = 4
    steps = 20 if args.smoke else args.steps
    seeds = [args.seed] if args.smoke else [args.seed + i for i in range(args.seeds)]
    runs = [("TraceEnum_ELBO (exact)", None)] + [(name, name) for name in args.estimators]
    scores = {label: [] for label, _ in runs}
    times = {label: [] for label, _ in runs}
    for seed in seeds:
        data = synthetic_moe_data(num_points=6000, num_experts=k, seed=seed)
        train_xy = (data.x[:5000], data.y[:5000])
        test_xy = (data.x[5000:], data.y[5000:])
        torch.manual_seed(seed)
        init = MixtureOfExperts(2, 1, k).state_dict()
        for label, estimator in runs:
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            if estimator is None:
                moe = EnumeratedMixtureOfExperts(2, 1, k)
                loss = TraceEnum_ELBO(max_plate_nesting=1)
            else:
                moe = MixtureOfExperts(2, 1, k)
                loss = sampling_elbo(estimator)
            moe.load_state_dict(init)
            t0 = time.perf_counter()
            done = train(moe.model, moe.guide, loss, train_xy, steps=steps, seed=seed)
            times[label].append(1000 * (time.perf_counter() - t0) / done)
            with torch.no_grad():
                scores[label].append(moe.log_likelihood(*test_xy).mean().item())
    print(f"Part 1: one routing latent per point, K={k} experts, {steps} steps of batch 100, "
          f"{len(seeds)} data sets / initialisations")
    print("held-out log p(y|x) per point (higher is better); the likelihood is multimodal, "
          "so single runs can land in different optima")
    header = " ".join(f"{'seed ' + str(s):>8s}" for s in seeds)
    print(f"{'method':>24s} {'ms/step':>8s} {header} {'mean':>8s}")
    for label, _ in runs:
        cells = " ".join(f"{v:8.3f}" for v in scores[label])
        mean = sum(scores[label]) / len(seeds)
        print(f"{label:>24s} {sum(times[label]) / len(seeds):8.1f} {cells} {mean:8.3f}")


class MultiRouteExperts(nn.Module):
    r"""``M`` routing decisions per data point among ``K`` shared linear experts.

    :math:`z_m \sim \mathrm{OneHotCategorical}(\mathrm{softmax}(g_m(x)))`,
    :math:`y \sim \mathcal N(\frac1M \sum_m \mu_{z_m}(x), \sigma)`. ``model``/``guide``
    sample one-hot latents ``z1 .. zM`` (for DiscreteELBO); ``enum_model``/``enum_guide``
    use Categorical indices enumerated in parallel (for TraceEnum_ELBO).
    """

    def __init__(self, input_dim: int, num_experts: int, num_routes: int) -> None:
        super().__init__()
        self.k, self.m = num_experts, num_routes
        self.gate = nn.Linear(input_dim, num_routes * num_experts)
        self.experts = nn.Linear(input_dim, num_experts)
        self.posterior = nn.Sequential(
            nn.Linear(input_dim + 1, 64), nn.Tanh(), nn.Linear(64, num_routes * num_experts)
        )
        self.log_scale = nn.Parameter(torch.zeros(()))

    def _logits(self, net, inputs):
        return net(inputs).unflatten(-1, (self.m, self.k))

    def model(self, x, y):
        pyro.module("multiroute", self)
        gate, out = self._logits(self.gate, x), self.experts(x)
        with pyro.plate("data", x.shape[0]):
            total = 0.0
            for m in range(self.m):
                z = pyro.sample(f"z{m + 1}", dist.OneHotCategorical(logits=gate[:, m]))
                total = total + (z * out).sum(-1)
            pyro.sample("y", dist.Normal(total / self.m, self.log_scale.exp()), obs=y[:, 0])

    def guide(self, x, y):
        pyro.module("multiroute", self)
        logits = self._logits(self.posterior, torch.cat([x, y], -1))
        with pyro.plate("data", x.shape[0]):
            for m in range(self.m):
                pyro.sample(f"z{m + 1}", dist.OneHotCategorical(logits=logits[:, m]))

    def enum_model(self, x, y):
        pyro.module("multiroute", self)
        gate, out = self._logits(self.gate, x), self.experts(x)
        with pyro.plate("data", x.shape[0]):
            total = 0.0
            for m in range(self.m):
                z = pyro.sample(f"z{m + 1}", dist.Categorical(logits=gate[:, m]))
                total = total + Vindex(out)[..., z]  # each z_m gets its own enumeration dim
            pyro.sample("y", dist.Normal(total / self.m, self.log_scale.exp()), obs=y[:, 0])

    def enum_guide(self, x, y):
        pyro.module("multiroute", self)
        logits = self._logits(self.posterior, torch.cat([x, y], -1))
        with pyro.plate("data", x.shape[0]):
            for m in range(self.m):
                pyro.sample(f"z{m + 1}", dist.Categorical(logits=logits[:, m]),
                            infer={"enumerate": "parallel"})


def multiroute_data(num_points, k, m, seed):
    torch.manual_seed(seed)
    truth = MultiRouteExperts(2, k, m)
    with torch.no_grad():
        truth.gate.weight.mul_(4)
        truth.experts.weight.mul_(3)
        x = torch.randn(num_points, 2)
        gate, out = truth._logits(truth.gate, x), truth.experts(x)
        z = dist.Categorical(logits=gate).sample()  # (N, M)
        y = out.gather(-1, z).mean(-1, keepdim=True) + 0.1 * torch.randn(num_points, 1)
    return x, y


def time_step(model, guide, loss, xy, repeats):
    svi = SVI(model, guide, Adam({"lr": 0.01}), loss=loss)
    svi.step(*xy)  # first step builds caches
    t0 = time.perf_counter()
    for _ in range(repeats):
        svi.step(*xy)
    return 1000 * (time.perf_counter() - t0) / repeats


def part2(args) -> None:
    k = 8
    max_routes = 2 if args.smoke else args.max_routes
    estimator = args.estimators[-1]
    batch = (torch.randn(100, 2), torch.randn(100, 1))
    print(f"\nPart 2: M routing latents per point, K={k} experts each, batch 100: ms per step")
    print(f"{'M':>3s} {'K^M':>9s} {'TraceEnum_ELBO':>15s} {estimator:>10s}")
    for m in range(1, max_routes + 1):
        pyro.clear_param_store()
        net = MultiRouteExperts(2, k, m)
        repeats = 2 if args.smoke else 5
        t_enum = time_step(net.enum_model, net.enum_guide, TraceEnum_ELBO(max_plate_nesting=1),
                           batch, repeats)
        pyro.clear_param_store()
        t_sample = time_step(net.model, net.guide, sampling_elbo(estimator), batch, repeats)
        print(f"{m:3d} {k**m:9d} {t_enum:15.1f} {t_sample:10.1f}")

    m = max_routes
    seconds = 2.0 if args.smoke else args.seconds
    x, y = multiroute_data(6000, k, m, args.seed)
    train_xy, test_xy = (x[:5000], y[:5000]), (x[5000:5500], y[5000:5500])
    torch.manual_seed(args.seed)
    init = MultiRouteExperts(2, k, m).state_dict()
    print(f"\nM={m}: train each for {seconds:.0f}s of wall-clock, then the 100-sample "
          "importance-weighted bound on 500 held-out points (higher is better)")
    for label, enumerate_ in (("TraceEnum_ELBO (exact)", True), (estimator, False)):
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        net = MultiRouteExperts(2, k, m)
        net.load_state_dict(init)
        if enumerate_:
            done = train(net.enum_model, net.enum_guide, TraceEnum_ELBO(max_plate_nesting=1),
                         train_xy, seconds=seconds, lr=0.01, seed=args.seed)
        else:
            done = train(net.model, net.guide, sampling_elbo(estimator), train_xy,
                         seconds=seconds, lr=0.01, seed=args.seed)
        pyro.set_rng_seed(args.seed)
        bound = importance_weighted_bound(net.model, net.guide, *test_xy,
                                          num_samples=20 if args.smoke else 100)
        print(f"{label:>24s}: {done:6d} steps, bound {bound:8.3f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimators", default="reinforce,rebar,rloo",
                        help="comma-separated DiscreteELBO estimators; the last one is used "
                        "in part 2")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=3, help="data sets in part 1")
    parser.add_argument("--max-routes", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few seconds' run")
    args = parser.parse_args(argv)
    args.estimators = [e for e in args.estimators.split(",") if e]
    torch.set_num_threads(1)
    part1(args)
    part2(args)


if __name__ == "__main__":
    main()
