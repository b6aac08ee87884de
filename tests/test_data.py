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


def _cifar100_files(root, layout, n_train=6, n_test=3, truncate=False):
    """Tiny CIFAR-100 files in the real formats: python pickles (fine_labels) or 3074-byte binary records."""
    import pickle

    import numpy as np
    rng = np.random.default_rng(0)
    fine = {"train": [0, 5, 17, 42, 98, 99][:n_train], "test": [99, 3, 64][:n_test]}
    if layout == "python":
        d = root / "cifar-100-python"
        d.mkdir()
        for split, labels in fine.items():
            batch = {b"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8), b"fine_labels": labels,
                     b"coarse_labels": [lab // 5 for lab in labels]}
            with open(d / split, "wb") as f:
                pickle.dump(batch, f)
    else:
        d = root / "cifar-100-binary"
        d.mkdir()
        for split, labels in fine.items():
            recs = [bytes([lab // 5, lab]) + rng.integers(0, 256, 3072, dtype=np.uint8).tobytes() for lab in labels]
            data = b"".join(recs)
            (d / f"{split}.bin").write_bytes(data[:-10] if truncate and split == "test" else data)
    return fine


@pytest.mark.parametrize("layout", ["python", "binary"])
def test_cifar100_layouts(tmp_path, layout):
    """CIFAR-100 (not on these machines) from synthetic files in both official layouts: fine labels, 100 classes."""
    fine = _cifar100_files(tmp_path, layout)
    data = load_data("cifar100", str(tmp_path), download=False)
    assert data.num_classes == 100 and data.input_shape == (3, 32, 32)
    assert [int(data.train[i][1]) for i in range(len(data.train))] == fine["train"]
    assert [int(data.test[i][1]) for i in range(len(data.test))] == fine["test"]


def test_cifar100_missing_or_truncated(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-100 not found under .*cifar-100-binary/ or cifar-100-python/"):
        load_data("cifar100", str(tmp_path), download=False)
    _cifar100_files(tmp_path, "binary", truncate=True)
    with pytest.raises(DataError, match="truncated"):
        load_data("cifar100", str(tmp_path), download=False)


def test_corrupt_cifar_pickle(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    (d / "train").write_bytes(b"\x80\x04garbage")
    (d / "test").write_bytes(b"")
    with pytest.raises(DataError, match="not a readable cifar100 python batch"):
        load_data("cifar100", str(tmp_path), download=False)


def test_missing_data_inside_a_ray_job_says_why(tmp_path, monkeypatch):
    """In a `ray job submit` entrypoint the working directory is an uploaded copy: the error says so."""
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    with pytest.raises(DataError, match="inside `ray job submit` the working directory is an uploaded copy"):
        load_data("mnist", str(tmp_path), download=False)
