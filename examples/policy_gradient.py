r"""Policy gradients on CartPole written as a Pyro program, trained through ``DiscreteELBO``.

The policy is a Pyro *guide*: at every time step it draws the action of each of a batch of
parallel episodes as one Bernoulli sample site (push right or left) inside a
``pyro.plate("episodes")``. The *model* is the environment: the same episodes replayed with
the same actions, a uniform prior on each action, and each reward added with
``pyro.factor("r_t", reward)``. The ELBO is then

.. math:: E_\pi\Big[\sum_t r_t\Big] - \alpha \sum_t \mathrm{KL}(\pi(\cdot \mid s_t) \,\|\,
          \mathrm{uniform}),

the expected return with an entropy bonus of weight :math:`\alpha` (``--entropy``; the
action sites are scaled by it), and maximising it is policy-gradient training. Each step of
the program is one update from a batch of episodes, and each action site is scored against
the rewards that come after it (the reward-to-go). Three estimators are compared:

- ``reinforce`` + a learned state-value baseline :math:`V_\psi(s_t)` (actor-critic's
  baseline), given with Pyro's own ``infer={"baseline": {"nn_baseline": ...}}`` option;
- ``rloo``: the episodes of a batch are the particles, each one's baseline is the mean
  reward-to-go of the others at the same time step;
- ``relax`` with ``black_box=True``: a learned action-dependent control variate
  :math:`c_\phi(z, \ell(s_t))` of the relaxed action and the policy's logit, with no
  :math:`f(\sigma(z))` term (the environment cannot be differentiated): "LAX/RELAX for RL"
  (Grathwohl et al. 2018).

A finished episode makes no further choices: its later action sites have a certain outcome
(so they add no noise) and no reward. The environment is gymnasium's vectorised
``CartPole-v1`` (numpy); an update re-runs its episodes from the same reset seed, so the
guide and the model see the same trajectories.

Solved (the classic cart-pole criterion): the mean return of the last 100 training episodes
reaches 195. ``--compare`` runs every estimator over several seeds and prints episodes to
solve (mean and 95% interval) and the log-variance of the policy gradient.

    python examples/policy_gradient.py --estimator rloo
    python examples/policy_gradient.py --compare --seeds 5
    python examples/policy_gradient.py --smoke      # a few seconds, for tests

Needs the ``rl`` extra: ``pip install -e ".[rl]"``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import SVI
from pyro.ops.provenance import get_provenance, track_provenance
from pyro.optim import Adam
from torch import nn

from pyro_discrete.infer import DiscreteELBO

SOLVED_AT = 195.0
WINDOW = 100
#: the logit of a finished episode's action: a certain outcome (b = 0), no score, no noise
FINISHED = -30.0

ESTIMATORS = {
    "reinforce": dict(estimator="reinforce"),
    "rloo": dict(estimator="rloo"),
    "relax": dict(estimator="relax", black_box=True, hidden=(32, 32)),
}


def make_envs(num_envs: int, horizon: int):
    try:
        import gymnasium
    except ImportError as error:  # pragma: no cover - the rl extra is installed by `make`
        raise SystemExit(
            "examples/policy_gradient.py needs gymnasium: pip install -e '.[rl]'"
        ) from error
    return gymnasium.make_vec(
        "CartPole-v1",
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        max_episode_steps=horizon,
    )


def from_environment(array: np.ndarray, action: torch.Tensor, shape) -> torch.Tensor:
    """An environment output as a tensor that records its dependence on ``action``.

    The environment computes in numpy, where the library's value provenance cannot follow
    the action; tagging the output with the action's provenance keeps every reward
    attributed to the actions before it (the reward-to-go). Outside the library's
    dependency pass the action carries no provenance and this is ``torch.as_tensor``.
    """
    tensor = torch.as_tensor(array, dtype=torch.float32).reshape(shape)
    return track_provenance(tensor, get_provenance(action))


class Episodes:
    """A batch of CartPole episodes of shape ``shape`` (particles x plate), replayable: the
    guide and the model each call :meth:`reset` with the update's seed and see the same
    trajectories for the same actions.

    A program's sites (one per time step) change with the longest episode of the batch;
    the library finds which rewards each action is scored against once per program
    structure, so the programs are padded with finished steps to one of a few lengths
    (``buckets``)."""

    def __init__(self, shape: tuple[int, ...], horizon: int = 200, buckets=(25, 50, 100)):
        self.shape = tuple(shape)
        self.horizon = horizon
        self.buckets = tuple(b for b in buckets if b < horizon) + (horizon,)
        self.envs = make_envs(math.prod(self.shape), horizon)
        self.alive = torch.ones(self.shape, dtype=torch.bool)

    def reset(self, seed: int) -> torch.Tensor:
        obs, _ = self.envs.reset(seed=seed)
        self.alive = torch.ones(self.shape, dtype=torch.bool)
        self.returns = torch.zeros(self.shape)
        return torch.as_tensor(obs).reshape(self.shape + (4,))

    def running(self, t: int) -> bool:
        """Whether the program takes a step ``t``: while an episode runs, then up to the
        next bucket length."""
        return t < self.horizon and (bool(self.alive.any()) or t not in self.buckets)

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Push each cart (1: right); the next observations and the rewards (0 for an
        episode that had already finished)."""
        act = action.detach().reshape(-1).round().to(torch.int64).numpy()
        obs, reward, terminated, truncated, _ = self.envs.step(act)
        reward = from_environment(reward, action, self.shape) * self.alive
        self.returns = self.returns + reward.detach()
        done = torch.as_tensor(terminated | truncated).reshape(self.shape)
        self.alive = self.alive & ~done
        return from_environment(obs, action, self.shape + (4,)), reward


def mlp(out: int, inputs: int = 4, hidden: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, out))


def value_mlp() -> nn.Module:
    """V(s_t, alive): one value per episode (the trailing unit dim flattened away)."""
    return nn.Sequential(mlp(1, inputs=5), nn.Flatten(-2))


@dataclass
class Agent:
    """The Pyro program (policy guide, environment model) and its networks."""

    episodes: Episodes
    entropy: float = 0.01
    value_baseline: bool = False
    policy_net: nn.Module = field(default_factory=lambda: mlp(1))
    value_net: nn.Module = field(default_factory=lambda: value_mlp())

    def policy(self, seed: int) -> None:
        """The guide: one Bernoulli action site per time step, for every episode."""
        pyro.module("policy", self.policy_net)
        if self.value_baseline:
            pyro.module("value", self.value_net)
        ep = self.episodes
        obs = ep.reset(seed)
        with pyro.plate("episodes", ep.shape[-1], dim=-1), poutine.scale(scale=self.entropy):
            t = 0
            while ep.running(t):
                logits = torch.where(ep.alive, self.policy_net(obs).squeeze(-1), FINISHED)
                infer = {}
                if self.value_baseline:
                    state = torch.cat([obs, ep.alive.unsqueeze(-1).float()], -1)
                    infer["baseline"] = {"nn_baseline": self.value_net, "nn_baseline_input": state}
                action = pyro.sample(f"a_{t}", dist.Bernoulli(logits=logits), infer=infer)
                obs, _ = ep.step(action)
                t += 1

    def environment(self, seed: int) -> None:
        """The model: a uniform prior on each action and the rewards of the episodes."""
        ep = self.episodes
        ep.reset(seed)
        with pyro.plate("episodes", ep.shape[-1], dim=-1):
            t = 0
            while ep.running(t):
                prior = torch.where(ep.alive, 0.0, FINISHED)
                with poutine.scale(scale=self.entropy):
                    action = pyro.sample(f"a_{t}", dist.Bernoulli(logits=prior))
                _, reward = ep.step(action)
                pyro.factor(f"r_{t}", reward)
                t += 1


def particle_shape(estimator: str, episodes_per_update: int) -> tuple[dict, tuple[int, ...]]:
    """``DiscreteELBO`` arguments and the episode batch's shape: RLOO's episodes are its
    particles (a leave-one-out baseline across them), the others' a plate."""
    if estimator == "rloo":
        k = episodes_per_update
        return dict(num_particles=k, vectorize_particles=True, max_plate_nesting=1), (k, 1)
    return dict(max_plate_nesting=1), (episodes_per_update,)


@dataclass
class Result:
    estimator: str
    seed: int
    episodes_to_solve: int | None
    episodes: int
    updates: int
    seconds: float
    log_variance: list[float]
    returns: list[float]


class Trainer:
    """One estimator's program and ``DiscreteELBO``, kept across seeds (so that which
    rewards each action is scored against is found once per program length)."""

    def __init__(
        self,
        estimator: str,
        episodes_per_update: int = 16,
        horizon: int = 200,
        entropy: float = 0.01,
        lr: float = 0.01,
        cv_lr: float = 0.01,
    ):
        self.estimator = estimator
        elbo_args, shape = particle_shape(estimator, episodes_per_update)
        self.elbo = DiscreteELBO(**ESTIMATORS[estimator], **elbo_args)
        self.agent = Agent(
            Episodes(shape, horizon), entropy=entropy, value_baseline=estimator == "reinforce"
        )
        self.model, self.guide = self.agent.environment, self.agent.policy
        self.lr, self.cv_lr = lr, cv_lr

    def optim_args(self, name: str) -> dict:
        return {"lr": self.lr if name.startswith("policy") else self.cv_lr}

    def policy_gradient(self, seed: int) -> torch.Tensor:
        """One estimate of the gradient of the policy's parameters (nothing is updated)."""
        store = pyro.get_param_store()
        for p in store.values():
            p.grad = None
        self.elbo.loss_and_grads(self.model, self.guide, seed)
        grad = torch.cat([p.grad.reshape(-1) for p in self.agent.policy_net.parameters()])
        # per episode: a plate sums its episodes' gradients, particles (RLOO) are averaged
        grad = grad / self.agent.episodes.shape[-1]
        for p in store.values():
            p.grad = None
        return grad

    def log_variance(self, rng: np.random.Generator, draws: int) -> float:
        """log of the mean over the policy's parameters of the variance of the gradient
        estimate, from ``draws`` independent batches at the current parameters and control
        variates (the RELAX paper's measure)."""
        grads = torch.stack([self.policy_gradient(int(rng.integers(2**31))) for _ in range(draws)])
        return math.log(grads.var(0).mean().item())

    def run(
        self,
        seed: int,
        max_episodes: int = 2000,
        variance_every: int = 0,
        variance_draws: int = 8,
        stop_when_solved: bool = True,
        verbose: bool = True,
    ) -> Result:
        """Train a fresh policy until solved or ``max_episodes``."""
        pyro.clear_param_store()
        torch.manual_seed(seed)
        self.agent.policy_net = mlp(1)
        self.agent.value_net = value_mlp()
        svi = SVI(self.model, self.guide, Adam(self.optim_args), loss=self.elbo)
        recent: deque = deque(maxlen=WINDOW)
        returns, log_variance = [], []
        solved, episodes, update = None, 0, 0
        rng = np.random.default_rng(seed)
        start = time.perf_counter()
        while episodes < max_episodes:
            if variance_every and update % variance_every == 0:
                log_variance.append(self.log_variance(rng, variance_draws))
            svi.step(int(rng.integers(2**31)))
            update += 1
            batch = self.agent.episodes.returns.reshape(-1).tolist()
            returns += batch
            recent.extend(batch)
            episodes += len(batch)
            mean = sum(recent) / len(recent)
            if verbose and update % 10 == 0:
                print(
                    f"  {self.estimator:>9s} seed {seed} update {update:4d} episodes "
                    f"{episodes:5d}: mean return (last {len(recent)}) {mean:6.1f}",
                    flush=True,
                )
            if solved is None and len(recent) == WINDOW and mean >= SOLVED_AT:
                solved = episodes
                if stop_when_solved:
                    break
        return Result(
            self.estimator, seed, solved, episodes, update, time.perf_counter() - start,
            log_variance, returns,
        )


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a 95% Student-t interval."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    from scipy import stats

    return mean, stats.t.ppf(0.975, n - 1) * sd / n**0.5


def compare(args) -> None:
    start = time.perf_counter()
    results: dict[str, list[Result]] = {}
    for name in args.estimators:
        trainer = make_trainer(name, args)
        for seed in range(args.seeds):
            r = trainer.run(
                seed, args.max_episodes, args.variance_every, args.variance_draws,
                verbose=args.verbose,
            )
            results.setdefault(name, []).append(r)
            solved = r.episodes_to_solve if r.episodes_to_solve else f"> {r.episodes}"
            print(
                f"{name:>9s} seed {seed}: solved after {solved} episodes, {r.updates} updates, "
                f"{r.seconds:.0f} s, log Var[g] {', '.join(f'{v:.2f}' for v in r.log_variance)}",
                flush=True,
            )
    print(
        f"\nepisodes to solve (mean return of the last {WINDOW} >= {SOLVED_AT:g}), "
        f"{args.episodes_per_update} episodes per update, {args.seeds} seeds"
    )
    print(
        f"{'estimator':>10s} {'solved':>7s} {'episodes (95% CI)':>22s} "
        f"{'log Var[g]':>11s} {'s per run':>10s}"
    )
    for name, runs in results.items():
        # an unsolved run counts as its budget: the mean is then a lower bound
        episodes = [r.episodes_to_solve or r.episodes for r in runs]
        mean, half = interval(episodes)
        lv = [v for r in runs for v in r.log_variance]
        logvar = f"{sum(lv) / len(lv):11.2f}" if lv else f"{'-':>11s}"
        n_solved = sum(r.episodes_to_solve is not None for r in runs)
        print(
            f"{name:>10s} {n_solved:>3d}/{len(runs):<3d} {mean:12.0f} +- {half:6.0f}"
            f" {logvar} {sum(r.seconds for r in runs) / len(runs):10.0f}"
        )
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


def make_trainer(name: str, args) -> Trainer:
    return Trainer(
        name, args.episodes_per_update, args.horizon, args.entropy, args.lr, args.cv_lr
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimator", default="rloo", choices=sorted(ESTIMATORS))
    parser.add_argument("--compare", action="store_true", help="every estimator, several seeds")
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes-per-update", type=int, default=16)
    parser.add_argument("--max-episodes", type=int, default=2000)
    parser.add_argument("--horizon", type=int, default=200, help="longest episode (steps)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--cv-lr", type=float, default=0.01, help="baseline / surrogate rate")
    parser.add_argument("--entropy", type=float, default=0.01, help="weight of the KL term")
    parser.add_argument("--variance-every", type=int, default=0,
                        help="measure the gradient's log-variance every N updates")
    parser.add_argument("--variance-draws", type=int, default=8)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="a few seconds' run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.smoke:
        args.max_episodes = 8 * args.episodes_per_update
    if args.compare:
        compare(args)
        return
    r = make_trainer(args.estimator, args).run(
        args.seed, args.max_episodes, args.variance_every, args.variance_draws,
        stop_when_solved=not args.smoke,
    )
    n = 3 * args.episodes_per_update
    first, last = sum(r.returns[:n]) / n, sum(r.returns[-n:]) / n
    print(f"mean return of the first 3 updates {first:.1f}, of the last 3 updates {last:.1f}")
    print(
        f"{args.estimator}: solved after {r.episodes_to_solve} episodes"
        if r.episodes_to_solve
        else f"{args.estimator}: not solved within {r.episodes} episodes"
    )
    print(f"{r.updates} updates in {r.seconds:.1f} s")


if __name__ == "__main__":
    main()
