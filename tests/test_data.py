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


def test_cifar10_python_pickles(tmp_path):
    """The python version many users have (cifar-10-batches-py) reads the same as the binary one."""
    import pickle

    import numpy as np
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 9]}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f)
    data = load_data("cifar10", str(tmp_path), download=False)
    assert len(data.train) == 20 and len(data.test) == 4
    x, y = data.test[3]
    assert x.shape == (3, 32, 32) and int(y) == 9


def test_imagefolder(tmp_path):
    from PIL import Image
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (i * 100, 50, 200)).save(tmp_path / split / cls / f"{i}.png")
    data = load_data("imagefolder", str(tmp_path))
    assert data.num_classes == 2 and len(data.train) == 4
    x, y = data.train[0]
    assert x.shape == (3, 32, 32)
    (tmp_path / "test" / "bird").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "test" / "bird" / "0.png")
    with pytest.raises(DataError, match="different classes"):
        load_data("imagefolder", str(tmp_path))
