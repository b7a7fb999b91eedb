"""Offline data sets for discrete-latent models: binarised MNIST and Fashion-MNIST.

:func:`binarized_mnist` and :func:`fashion_mnist` return ``(N, 784)`` float tensors and
:func:`mnist_labels` the digit of each MNIST image, in the same order;
:class:`MinibatchIterator` and :class:`DynamicBinarizer` turn them into reproducible,
resumable minibatch streams.
"""

from ._cache import cache_dir
from .fashion_mnist import fashion_mnist, fashion_mnist_dir, read_idx
from .loaders import DynamicBinarizer, MinibatchIterator
from .means import training_mean
from .mnist import (
    SPLITS,
    DataNotFoundError,
    binarize,
    binarized_mnist,
    mnist_labels,
    mnist_probabilities,
    mnist_source_path,
)

__all__ = [
    "SPLITS",
    "DataNotFoundError",
    "DynamicBinarizer",
    "MinibatchIterator",
    "binarize",
    "binarized_mnist",
    "cache_dir",
    "fashion_mnist",
    "fashion_mnist_dir",
    "mnist_labels",
    "mnist_probabilities",
    "mnist_source_path",
    "read_idx",
    "training_mean",
]
