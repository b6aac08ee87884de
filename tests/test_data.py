import gzip

import pytest

from cdkd.data import load_data, _read_idx
from cdkd.errors import DataError


def test_mnist_from_shared_idx_files(data_root):
    d = load_data("mnist", data_root, download=False)
    assert len(d.train) == 60000 and len(d.test) == 10000
    x, y = d.train[0]
    assert x.shape == (1, 32, 32) and int(y) == 5  # the first MNIST training digit is a 5


def test_cifar10_binary(data_root):
    d = load_data("cifar10", data_root, download=False)
    assert len(d.train) == 50000 and len(d.test) == 10000 and d.input_shape == (3, 32, 32)


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match="MNIST not found"):
        load_data("mnist", str(tmp_path), download=False)
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="not an IDX file"):
        _read_idx(str(bad), 2051)
    with pytest.raises(DataError, match="unknown dataset"):
        load_data("svhn", str(tmp_path))
