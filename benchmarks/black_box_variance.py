"""Gradient variance of lax vs REINFORCE / NVIL, and of relax ``black_box=True`` vs RLOO,
after training the control variates (the figures of docs/choosing.md, section "Black-box
objectives"). The models are the test models of ``tests/infer/test_lax.py`` and
``tests/infer/test_relax_black_box.py``.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.black_box_variance`` (about 6 minutes on a
2-core CPU).
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))

import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from infer.test_lax import ContinuousCase, _draws, _train_control_variate  # noqa: E402
from infer.test_relax_black_box import _numpy_bits  # noqa: E402

from pyro_discrete.infer import DiscreteELBO  # noqa: E402

torch.set_num_threads(1)


def cont(est, opts, steps, seed):
    pyro.set_rng_seed(seed)
    case = ContinuousCase("normal", "detached")
    case.exact()
    elbo = DiscreteELBO(est, max_plate_nesting=1, **opts)
    if steps:
        _train_control_variate(case, elbo, steps)
    d = _draws(case, elbo, 400)
    return {k: v.var(0).mean().item() for k, v in d.items()}


def disc(est, opts, steps, seed):
    pyro.set_rng_seed(seed)
    problem = _numpy_bits(1)

    # the same reward in torch: a numpy reward needs the black-box cost detection
    def model():
        with pyro.plate("data", 2, dim=-1):
            b = pyro.sample("b", dist.Bernoulli(0.5 * torch.ones(2, 3)).to_event(1))
            pyro.factor("reward", -((b - 0.499) ** 2).sum(-1) + 1.5 * b[..., 0] * b[..., 2])

    problem.model = model
    problem.reset()
    elbo = DiscreteELBO(est, num_particles=2, vectorize_particles=True, max_plate_nesting=1, **opts)
    elbo.loss_and_grads(problem.model, problem.guide)
    store = pyro.get_param_store()
    net = [v for k, v in store.named_parameters() if k.startswith("pyro_discrete/")]
    opt = torch.optim.Adam(net, lr=0.01) if net else None
    for _ in range(steps if net else 0):
        for _, v in store.named_parameters():
            v.grad = None
        elbo.loss_and_grads(problem.model, problem.guide)
        opt.step()
    q = pyro.param("q").unconstrained()
    draws = []
    for _ in range(1000):
        for _, v in store.named_parameters():
            v.grad = None
        elbo.loss_and_grads(problem.model, problem.guide)
        draws.append(-q.grad.clone())
    return torch.stack(draws).var(0).mean().item()


def main() -> None:
    for seed in (0, 1):
        for est, opts in (("reinforce", {}), ("nvil", {"normalize_variance": False}), ("lax", {})):
            t = time.time()
            print(
                "continuous",
                seed,
                est,
                cont(est, opts, 500 if est != "reinforce" else 0, seed),
                f"{time.time() - t:.0f}s",
                flush=True,
            )
    for seed in (0, 1):
        for est, opts in (("rloo", {}), ("relax", {"black_box": True, "hidden": (32,)})):
            t = time.time()
            print(
                "discrete",
                seed,
                est,
                disc(est, opts, 500, seed),
                f"{time.time() - t:.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
