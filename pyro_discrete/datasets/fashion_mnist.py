r"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files, offline).

The official 60,000-image training set is split into ``"train"`` (its first 50,000 images)
and ``"valid"`` (the last 10,000), mirroring the MNIST protocol; ``"test"`` is the official
10,000-image test set.
"""

from __future__ import annotations

import gzip
import os
import struct
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .loaders import _child_seed
from .mnist import SPLITS, DataNotFoundError, Split, _check_split, binarize

__all__ = ["fashion_mnist", "fashion_mnist_dir", "read_idx"]

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
_ENV = "PYRO_DISCRETE_FASHION_MNIST_DIR"
_FILES = {"train": "train-images-idx3-ubyte.gz", "test": "t10k-images-idx3-ubyte.gz"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def fashion_mnist_dir() -> Path:
    """``$PYRO_DISCRETE_FASHION_MNIST_DIR`` if set, else ``/usr/share/datasets/fashion-mnist``."""
    root = os.environ.get(_ENV)
    return Path(root) if root else DEFAULT_DIR


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST container format), gzip-compressed or not.

    The header is two zero bytes, a type code, the number of dimensions, then one big-endian
    ``uint32`` per dimension; the data follow in C order.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (header {raw[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=_IDX_DTYPES[code], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values, found {data.size}")
    return data.reshape(shape)


@lru_cache(maxsize=4)
def _images(path: str) -> torch.Tensor:
    return torch.from_numpy(read_idx(path).reshape(-1, 784).copy())


def fashion_mnist(
    split: Split = "train",
    binarization: Literal["static", "dynamic"] | None = None,
    seed: int | None = 0,
) -> torch.Tensor:
    r"""Fashion-MNIST images as float32 of shape ``(N, 784)``.

    :param str split: ``"train"`` (50,000), ``"valid"`` (10,000) or ``"test"`` (10,000).
    :param binarization: ``None`` for grey levels in ``[0, 1]``; ``"static"`` or
        ``"dynamic"`` for a Bernoulli draw with ``seed`` as in
        :func:`~pyro_discrete.datasets.binarized_mnist` (not cached: decoding is fast).
    :raises DataNotFoundError: if the IDX files are missing.
    """
    _check_split(split)
    root = fashion_mnist_dir()
    path = root / _FILES["test" if split == "test" else "train"]
    if not path.is_file():
        raise DataNotFoundError(
            f"Fashion-MNIST not found: {path} is missing. On Debian/Ubuntu install it with\n"
            "    sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist\n"
            f"or put the four *-idx*-ubyte.gz files from github.com/zalandoresearch/fashion-mnist "
            f"in a directory and point ${_ENV} at it."
        )
    images = _images(str(path))
    if split == "train":
        images = images[:50_000]
    elif split == "valid":
        images = images[50_000:]
    probs = images.float().div_(255.0)
    if binarization is None:
        return probs
    if binarization not in ("static", "dynamic"):
        raise ValueError(f"binarization must be None, 'static' or 'dynamic', got {binarization!r}")
    if seed is None and binarization == "static":
        raise ValueError("static binarisation needs an integer seed")
    split_seed = None if seed is None else _child_seed(seed, SPLITS.index(split), 7)
    return binarize(probs, split_seed)
