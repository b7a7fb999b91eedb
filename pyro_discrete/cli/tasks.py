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
from pyro_discrete.infer.adapters import ESTIMATOR_CLASSES
from pyro_discrete.infer.sites import SiteError
from pyro_discrete.models import MODEL_SPECS, ModelSpec, synthetic_moe_data
from pyro_discrete.optim import MultiTensorAdam

from .errors import CLIError

__all__ = [
    "DATA_SOURCES",
    "DataSource",
    "Task",
    "check_batch_size",
    "check_estimators_apply",
    "check_model_name",
    "data_for",
    "describe_data",
    "estimators_for",
    "make_device",
    "make_elbo",
    "make_optimizer",
    "make_task",
    "split_estimator_label",
]


def split_estimator_label(label: str) -> tuple[str, int | None]:
    """``"rloo:8"`` -> ``("rloo", 8)``; ``"rloo"`` -> ``("rloo", None)`` (the class's default
    number of particles). :raises CLIError: when the part after ``:`` is not a positive
    integer."""
    name, sep, count = label.partition(":")
    if not sep:
        return name, None
    if not count.isdigit() or int(count) < 1:
        raise CLIError(
            f"estimator {label!r}: the number of particles after ':' must be a positive "
            f"integer, e.g. {name}:8"
        )
    return name, int(count)


def make_elbo(name: str, **options) -> DiscreteELBO:
    """The :class:`~pyro_discrete.infer.DiscreteELBO` for estimator ``name``.

    ``name`` may end in ``:K`` (``"rloo:201"``) for ``num_particles=K``; without it,
    multi-sample estimators (``rloo``, ``vimco``) get their class's default of 2 particles.
    Every model here has one data plate, so ``max_plate_nesting=1``.

    :raises CLIError: for an unknown estimator name, listing the valid ones.
    """
    name, particles = split_estimator_label(name)
    if particles is not None:
        options.setdefault("num_particles", particles)
    if name not in ESTIMATORS:
        raise CLIError(f"unknown estimator {name!r}; valid names: {', '.join(ESTIMATORS)}")
    options.setdefault("max_plate_nesting", 1)
    return ESTIMATORS[name](**options)


def check_model_name(name: str) -> ModelSpec:
    """The registry entry of model ``name``; :raises CLIError: for an unknown name, listing
    the valid ones."""
    if name not in MODEL_SPECS:
        raise CLIError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODEL_SPECS))}")
    return MODEL_SPECS[name]


#: how a message names each site kind of :attr:`ModelSpec.latent_kinds`
_KIND_NAMES = {
    "bernoulli": "Bernoulli",
    "one_hot": "OneHotCategorical",
    "categorical": "index-valued Categorical",
    "other": "not discrete",
}


def _handles(estimator: str, kinds: tuple[str, ...]) -> bool:
    # the adapter's own check of its ``requires`` (the one that refuses a site at the
    # first step), asked here of each kind before anything runs
    adapter = ESTIMATOR_CLASSES[estimator]()
    for kind in kinds:
        try:
            adapter.check_site("z", kind, _KIND_NAMES.get(kind, kind))
        except SiteError:
            return False
    return True


def estimators_for(model_name: str) -> list[str]:
    """The estimators that handle every latent site of model ``model_name``: those whose
    adapter's ``requires`` accepts each of its :attr:`~pyro_discrete.models.ModelSpec.latent_kinds`
    (all of them where the model declares none)."""
    kinds = check_model_name(model_name).latent_kinds
    return [name for name in ESTIMATORS if _handles(name, kinds)]


def check_estimators_apply(estimators: list[str], model_name: str) -> None:
    """Refuse the estimators of ``estimators`` that cannot handle the latent sites of model
    ``model_name``.

    :raises CLIError: naming them, the model and the estimators that apply to it.
    """
    applicable = estimators_for(model_name)
    refused = [label for label in estimators if split_estimator_label(label)[0] not in applicable]
    if not refused:
        return
    kinds = check_model_name(model_name).latent_kinds
    sites = " and ".join(_KIND_NAMES.get(kind, kind) for kind in kinds)
    names = ", ".join(repr(name) for name in refused)
    raise CLIError(
        f"estimator{'s' if len(refused) > 1 else ''} {names} cannot handle the {sites} latent "
        f"sites of model {model_name!r}; estimators that apply to it: {', '.join(applicable)}"
    )


def data_for(model_name: str, data: str | None) -> str:
    """The ``--data`` of a run of ``model_name``: ``data``, or the model's default.

    :raises CLIError: for an unknown model, or data the model is not trained on.
    """
    spec = check_model_name(model_name)
    if data is None:
        return spec.default_data
    if data not in spec.data:
        raise CLIError(
            f"--data {data} is not a data set of model {model_name!r}, which trains on "
            f"{' or '.join(spec.data)}; pass one of those, or drop --data"
        )
    return data


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
        return MODEL_SPECS[self.model_name].build(**self.model_kwargs)

    def loader(self, batch_size: int, seed: int, device: torch.device) -> MinibatchIterator:
        if self.train_probs is not None:
            return DynamicBinarizer(self.train_probs, batch_size, seed=seed, device=device)
        return MinibatchIterator(self.train, batch_size, seed=seed, device=device)


def _mixture_of_experts_task(model_name: str, binarization: str, data_seed: int) -> Task:
    moe = synthetic_moe_data(num_points=12_000, seed=data_seed)
    rows = torch.cat([moe.x, moe.y], -1)
    parts = {"train": rows[:10_000], "valid": rows[10_000:11_000], "test": rows[11_000:]}
    input_dim = moe.x.shape[-1]
    return Task(
        model_name,
        "synthetic_moe",
        parts["train"],
        {"input_dim": input_dim, "output_dim": moe.y.shape[-1]},
        lambda r: (r[..., :input_dim], r[..., input_dim:]),
        parts.__getitem__,
    )


def _image_task(data: str, binarized, grey_levels) -> Callable[[str, str, int], Task]:
    def load(model_name: str, binarization: str, data_seed: int) -> Task:
        def split(name):
            return binarized(name, "static", seed=data_seed)

        probs = grey_levels() if binarization == "dynamic" else None
        train = split("train") if probs is None else probs
        kwargs = {"x_mean": training_mean(data)}
        return Task(model_name, data, train, kwargs, lambda r: (r,), split, probs)

    return load


@dataclass(frozen=True)
class DataSource:
    """A ``--data`` name: how to load it for a model, and how the report names it."""

    name: str
    report_name: str
    #: whether ``--binarization`` applies (images with grey levels)
    binarized: bool
    load: Callable[[str, str, int], Task]


#: every ``--data`` of the command line; :data:`~pyro_discrete.models.MODEL_SPECS` says
#: which a model trains on
DATA_SOURCES: dict[str, DataSource] = {
    source.name: source
    for source in (
        DataSource(
            "mnist",
            "MNIST",
            True,
            _image_task("mnist", binarized_mnist, lambda: mnist_probabilities("train")),
        ),
        DataSource(
            "fashion_mnist",
            "Fashion-MNIST",
            True,
            _image_task("fashion_mnist", fashion_mnist, lambda: fashion_mnist("train")),
        ),
        DataSource(
            "synthetic_moe", "synthetic mixture-of-experts data", False, _mixture_of_experts_task
        ),
    )
}


def describe_data(data: str, binarization: str) -> str:
    """How the report names the data of a run, e.g. ``statically binarised MNIST``."""
    source = DATA_SOURCES[data]
    if not source.binarized:
        return source.report_name
    return f"{binarization}ally binarised {source.report_name}"


def make_task(
    model_name: str, data: str | None = None, binarization: str = "static", data_seed: int = 0
) -> Task:
    """Load the data a model is trained on (``data``: one of the model's
    :attr:`~pyro_discrete.models.ModelSpec.data`, default its first).

    Belief nets and the categorical VAE use binarised MNIST (``data="mnist"``) or
    Fashion-MNIST (``data="fashion_mnist"``); the mixture of experts uses
    :func:`~pyro_discrete.models.synthetic_moe_data` (10,000 / 1,000 / 1,000 points).
    """
    data = data_for(model_name, data)
    if binarization not in ("static", "dynamic"):
        raise CLIError(f"--binarization must be static or dynamic, got {binarization!r}")
    return DATA_SOURCES[data].load(model_name, binarization, data_seed)


def check_batch_size(batch_size: int, task: Task) -> None:
    """:raises CLIError: for a minibatch larger than the training data."""
    rows = int(task.train.shape[0])
    if batch_size > rows:
        raise CLIError(
            f"--batch-size {batch_size} is larger than the {rows} training examples of "
            f"{task.data_name}; pass at most {rows}"
        )


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
