"""Data-parallel training of a discrete VAE on several processes, GPUs or machines.

A sigmoid belief net (or the categorical VAE) trained with any pyro_discrete estimator
through PyTorch Lightning (``pip install "pyro-discrete[lightning]"``)::

    python examples/data_parallel.py --devices 2 --accelerator cpu --steps 50
    python examples/data_parallel.py --devices 4 --accelerator gpu --estimator rebar
    torchrun --nnodes 2 --nproc-per-node 4 ... examples/data_parallel.py --devices 4 \\
        --num-nodes 2 --accelerator gpu          # on each machine (see docs/data_parallel.md)

With ``--devices N`` (and ``--strategy ddp``, the default then) Lightning runs this script
once more for each further process; each process trains on its own shard of the data
with its own samples, and every step averages the gradients (DDP) and the estimator's
running statistics. The effective batch is ``--batch-size x devices x num-nodes``.

At the end every process prints checksums of its parameters and running statistics
(equal on all processes) and process 0 the training throughput and the ELBO of its last
steps. ``--data synthetic`` (noisy copies of random binary prototypes) needs no data set;
``--data mnist`` uses binarised MNIST.
"""

from __future__ import annotations

import argparse
import sys

import pyro
import torch
from torch.utils.data import TensorDataset

from pyro_discrete.infer import ESTIMATORS
from pyro_discrete.infer.control_variates import running_statistics
from pyro_discrete.lightning import Throughput, fit
from pyro_discrete.models import make_model

VAE_MODELS = ("sbn_linear1", "sbn_linear2", "sbn_nonlinear", "categorical_vae")


def synthetic_images(num: int, pixels: int = 784, prototypes: int = 10, seed: int = 0):
    """Binary images: each a copy of one of ``prototypes`` random patterns with 5% of its
    pixels flipped. Drawn from a fixed generator, so every process builds the same set."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.bernoulli(torch.full((prototypes, pixels), 0.3), generator=g)
    which = torch.randint(prototypes, (num,), generator=g)
    flips = torch.bernoulli(torch.full((num, pixels), 0.05), generator=g)
    return (patterns[which] + flips) % 2


def load_data(name: str, size: int, pixels: int) -> torch.Tensor:
    if name == "synthetic":
        return synthetic_images(size, pixels)
    from pyro_discrete.datasets import binarized_mnist

    return binarized_mnist("train")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sbn_linear1", choices=VAE_MODELS)
    parser.add_argument("--estimator", default="nvil", choices=sorted(ESTIMATORS))
    parser.add_argument("--data", default="synthetic", choices=("synthetic", "mnist"))
    parser.add_argument("--synthetic-size", type=int, default=10_000)
    parser.add_argument("--pixels", type=int, default=784, help="synthetic image size")
    parser.add_argument("--steps", type=int, default=1000, help="total optimizer steps")
    parser.add_argument("--batch-size", type=int, default=24, help="examples per process")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--cv-lr-factor", type=float, default=10.0)
    parser.add_argument("--devices", default="1", help="processes (CPU) or GPUs per machine")
    parser.add_argument("--accelerator", default="cpu", help="cpu, gpu or auto")
    parser.add_argument("--strategy", default=None, help="default: ddp with several devices")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument(
        "--sync-every", type=int, default=1, help="steps between averages of the running statistics"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root-dir", default="lightning_runs/data_parallel")
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--ckpt-path", default=None, help="resume from this checkpoint")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    strategy = args.strategy or ("ddp" if devices != 1 or args.num_nodes > 1 else "auto")
    pyro.clear_param_store()
    images = load_data(args.data, args.synthetic_size, args.pixels)
    torch.manual_seed(args.seed)  # the model's initial weights (DDP also broadcasts rank 0's)
    net = make_model(args.model, x_mean=images.mean(0), x_dim=images.shape[-1])
    loss = ESTIMATORS[args.estimator](max_plate_nesting=1)
    throughput = Throughput(skip=min(5, args.steps - 1))
    trainer, module = fit(
        net.model,
        net.guide,
        loss,
        TensorDataset(images),
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        control_variate_lr_factor=args.cv_lr_factor,
        optimizer_options={"betas": (0.9, 0.99999)},  # as the REBAR code
        devices=devices,
        accelerator=args.accelerator,
        strategy=strategy,
        num_nodes=args.num_nodes,
        seed=args.seed,
        sync_every=args.sync_every,
        root_dir=args.root_dir,
        checkpoint_every=args.checkpoint_every,
        ckpt_path=args.ckpt_path,
        callbacks=[throughput],
    )
    params = sum(p.detach().double().sum().item() for p in module.parameters())
    stats = sum(t.double().sum().item() for t in running_statistics().values())
    # one write per line: the processes share stdout, and print() under
    # PYTHONUNBUFFERED writes the text and its newline separately
    sys.stdout.write(
        f"rank {trainer.global_rank}/{trainer.world_size}: step {trainer.global_step}, "
        f"parameter checksum {params!r}, running-statistics checksum {stats!r}\n"
    )
    sys.stdout.flush()
    result = {"step": trainer.global_step, "world_size": trainer.world_size}
    if trainer.global_rank == 0:
        last = trainer.callback_metrics.get("train_loss")
        effective = args.batch_size * trainer.world_size
        print(
            f"{args.model} with {args.estimator}: {trainer.world_size} process(es), effective "
            f"batch {effective}, steps {throughput.first_step} -> {trainer.global_step}"
        )
        if last is not None:
            print(
                f"train ELBO of the last step (process 0): {-float(last) / args.batch_size:.2f}"
                " nats per example"
            )
        if throughput.examples_per_s is not None:
            print(
                f"throughput: {throughput.examples_per_s:.0f} examples/s "
                f"({throughput.steps_per_s:.1f} steps/s)"
            )
            result["examples_per_s"] = throughput.examples_per_s
    return result


if __name__ == "__main__":
    main()
