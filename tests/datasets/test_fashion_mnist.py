import gzip
import struct

import numpy as np
import pytest
import torch

from pyro_discrete.datasets import DataNotFoundError, fashion_mnist, fashion_mnist_dir, read_idx

have_fashion = (fashion_mnist_dir() / "train-images-idx3-ubyte.gz").is_file()


@pytest.mark.skipif(not have_fashion, reason="Debian package dataset-fashion-mnist not installed")
@pytest.mark.parametrize("split,size", [("train", 50_000), ("valid", 10_000), ("test", 10_000)])
def test_fashion_splits(split, size):
    x = fashion_mnist(split)
    assert x.shape == (size, 784) and x.dtype == torch.float32
    assert x.min() == 0 and x.max() == 1
    b = fashion_mnist(split, binarization="static", seed=0)
    assert set(b.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(b, fashion_mnist(split, binarization="static", seed=0))


@pytest.mark.skipif(not have_fashion, reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_train_and_valid_partition_the_official_training_set():
    full = torch.from_numpy(read_idx(fashion_mnist_dir() / "train-images-idx3-ubyte.gz").copy())
    assert full.shape == (60_000, 28, 28)
    assert torch.equal(fashion_mnist("valid")[0], full[50_000].flatten().float() / 255)


def test_missing_fashion_mnist_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_DISCRETE_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        fashion_mnist("train")


def test_read_idx_roundtrip_and_rejects_garbage(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB3I", 0, 0x08, 3, 2, 3, 4) + data.tobytes())
    assert np.array_equal(read_idx(path), data)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + bytes(8))
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">HBB1I", 0, 0x08, 1, 10) + bytes(3))
    with pytest.raises(ValueError, match="expected 10 values"):
        read_idx(short)
