"""Train a discrete VAE on binarised MNIST with any pyro_discrete gradient estimator.

A sigmoid belief net (the REBAR/RELAX protocol's linear or nonlinear models) or a VAE with
20 one-hot categoricals of 10 classes, trained with ``pyro.infer.SVI`` and
``DiscreteELBO(estimator=...)``; the estimator is one flag::

    python examples/discrete_vae.py --estimator rebar --steps 5000
    python examples/discrete_vae.py --model categorical_vae --estimator gumbel_rao
    python examples/discrete_vae.py --smoke          # a few seconds, for tests

At the end it reports the 100-sample importance-weighted bound on validation images and
the PSIS Pareto k-hat of the guide (how trustworthy it is as an importance proposal).
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch
from pyro.infer import SVI

from pyro_discrete.datasets import MinibatchIterator, binarized_mnist, training_mean
from pyro_discrete.diagnostics import elbo_estimate, importance_weighted_bound, psis_khat
from pyro_discrete.infer import ESTIMATORS, DiscreteELBO, control_variate_lr
from pyro_discrete.models import make_model
from pyro_discrete.optim import MultiTensorAdam

VAE_MODELS = ("sbn_linear1", "sbn_linear2", "sbn_nonlinear", "categorical_vae")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sbn_linear1", choices=VAE_MODELS)
    parser.add_argument("--estimator", default="rebar", choices=sorted(ESTIMATORS))
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few seconds' run")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps = 30
    torch.set_num_threads(1)  # batch-24 steps do not gain from intra-op threads

    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    x_train = binarized_mnist("train")
    x_valid = binarized_mnist("valid")[: 100 if args.smoke else 1000]
    vae = make_model(args.model, x_mean=training_mean())

    # multi-sample estimators (rloo, vimco) need several particles per step
    particles = 2 if args.estimator in ("rloo", "vimco") else 1
    elbo = DiscreteELBO(estimator=args.estimator, num_particles=particles, max_plate_nesting=1)
    # Adam with beta2 = 0.99999 and control variates at 10x the model's rate, as in REBAR;
    # MultiTensorAdam steps all parameters at once (pyro.optim.Adam works too, slower)
    optim = MultiTensorAdam(control_variate_lr(args.lr, 10.0, betas=(0.9, 0.99999)))
    svi = SVI(vae.model, vae.guide, optim, loss=elbo)

    loader = MinibatchIterator(x_train, args.batch_size, seed=args.seed)
    start, running = time.perf_counter(), None
    report_every = max(args.steps // 10, 1)
    for step in range(1, args.steps + 1):
        batch = loader.next_batch()
        loss = svi.step(batch) / batch.shape[0]
        running = loss if running is None else 0.98 * running + 0.02 * loss
        if step % report_every == 0:
            rate = step / (time.perf_counter() - start)
            print(f"step {step:6d}  train ELBO (moving average) {-running:8.2f}  "
                  f"{rate:6.1f} steps/s")

    with torch.no_grad():
        valid_elbo = elbo_estimate(vae.model, vae.guide, x_valid)
        iw = importance_weighted_bound(vae.model, vae.guide, x_valid,
                                       num_samples=10 if args.smoke else 100)
        khat = psis_khat(vae.model, vae.guide, x_valid[:20], num_samples=200 if args.smoke
                         else 1000)
    print(f"validation ({x_valid.shape[0]} images): ELBO {valid_elbo:.2f}, "
          f"importance-weighted bound {iw:.2f} nats")
    print(f"PSIS k-hat of the guide on 20 images: median {float(torch.tensor(khat).median()):.2f}"
          f", {int((torch.tensor(khat) > 0.7).sum())} of 20 above 0.7")


if __name__ == "__main__":
    main()
