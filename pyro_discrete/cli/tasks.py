"""What a run trains: the estimator's loss, the model bound to its data, device and optimiser."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from torch import nn

from pyro_discrete.datasets import (
    DynamicBinarizer,
    MinibatchIterator,
    binarized_mnist,
    fashion_mnist,
    mnist_probabilities,
    training_mean,
)
from pyro_discrete.infer import ESTIMATORS, DiscreteELBO, control_variate_lr
from pyro_discrete.models import MODELS, synthetic_moe_data
from pyro_discrete.optim import MultiTensorAdam

from .errors import CLIError

__all__ = ["Task", "check_model_name", "make_elbo", "make_task", "make_device", "make_optimizer"]


def make_elbo(name: str, **options) -> DiscreteELBO:
    """The :class:`~pyro_discrete.infer.DiscreteELBO` for estimator ``name``.

    Multi-sample estimators (``rloo``, ``vimco``) get their class's default of 2 particles;
    every model here has one data plate, so ``max_plate_nesting=1``.

    :raises CLIError: for an unknown estimator name, listing the valid ones.
    """
    if name not in ESTIMATORS:
        raise CLIError(f"unknown estimator {name!r}; valid names: {', '.join(ESTIMATORS)}")
    options.setdefault("max_plate_nesting", 1)
    return ESTIMATORS[name](**options)


def check_model_name(name: str) -> None:
    """:raises CLIError: for an unknown model name, listing the valid ones."""
    if name not in MODELS:
        raise CLIError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")


@dataclass
class Task:
    """A model name bound to its data: how to build the model and feed it minibatches.

    ``train`` holds the training rows (for MNIST-like data, images; for the mixture of
    experts, ``[x, y]`` side by side); :meth:`args` turns rows into model arguments.
    """

    model_name: str
    data_name: str
    train: torch.Tensor
    model_kwargs: dict
    args: Callable[[torch.Tensor], tuple]
    split_rows: Callable[[str], torch.Tensor]
    train_probs: torch.Tensor | None = None  # grey levels, for dynamic binarisation

    def build_model(self) -> nn.Module:
        return MODELS[self.model_name](**self.model_kwargs)

    def loader(self, batch_size: int, seed: int, device: torch.device) -> MinibatchIterator:
        if self.train_probs is not None:
            return DynamicBinarizer(self.train_probs, batch_size, seed=seed, device=device)
        return MinibatchIterator(self.train, batch_size, seed=seed, device=device)


def _mixture_of_experts_task(data_seed: int) -> Task:
    moe = synthetic_moe_data(num_points=12_000, seed=data_seed)
    rows = torch.cat([moe.x, moe.y], -1)
    parts = {"train": rows[:10_000], "valid": rows[10_000:11_000], "test": rows[11_000:]}
    input_dim = moe.x.shape[-1]
    return Task(
        "mixture_of_experts",
        "synthetic_moe",
        parts["train"],
        {"input_dim": input_dim, "output_dim": moe.y.shape[-1]},
        lambda r: (r[..., :input_dim], r[..., input_dim:]),
        parts.__getitem__,
    )


def make_task(
    model_name: str, data: str = "mnist", binarization: str = "static", data_seed: int = 0
) -> Task:
    """Load the data a model is trained on.

    Belief nets and the categorical VAE use binarised MNIST (``data="mnist"``) or
    Fashion-MNIST (``data="fashion_mnist"``); the mixture of experts uses
    :func:`~pyro_discrete.models.synthetic_moe_data` (10,000 / 1,000 / 1,000 points).
    """
    check_model_name(model_name)
    if binarization not in ("static", "dynamic"):
        raise CLIError(f"--binarization must be static or dynamic, got {binarization!r}")
    if model_name == "mixture_of_experts":
        return _mixture_of_experts_task(data_seed)
    if data == "mnist":

        def split(name):
            return binarized_mnist(name, "static", seed=data_seed)

        probs = mnist_probabilities("train") if binarization == "dynamic" else None
        mean = training_mean("mnist")
    elif data == "fashion_mnist":

        def split(name):
            return fashion_mnist(name, "static", seed=data_seed)

        probs = fashion_mnist("train") if binarization == "dynamic" else None
        mean = training_mean("fashion_mnist")
    else:
        raise CLIError(f"unknown data set {data!r}; valid: mnist, fashion_mnist")
    train = split("train") if probs is None else probs
    return Task(model_name, data, train, {"x_mean": mean}, lambda r: (r,), split, probs)


def make_device(name: str) -> torch.device:
    """The ``--device``; :raises CLIError: if it is unknown or CUDA is not available."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(
            "--device cuda was requested but CUDA is not available to this torch build "
            f"(torch {torch.__version__}); use --device cpu or install a CUDA build of torch"
        )
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise CLIError(f"bad --device {name!r}: {e}") from None


def make_optimizer(lr: float, cv_factor: float) -> pyro.optim.PyroOptim:
    """Adam at ``lr`` for the model, ``cv_factor * lr`` for the control variates."""
    # β₂ = 0.99999 and 10x learning rate for control variates follow the REBAR code; one
    # fused Adam instead of Pyro's optimizer-per-parameter loop, which costs a large share
    # of a batch-24 step
    return MultiTensorAdam(control_variate_lr(lr, cv_factor, betas=(0.9, 0.99999)))
