"""Real data sets, used only to train demo teachers and to evaluate (never by the data-free distillation).

Reads the original distributions from a data directory: MNIST IDX files (gzipped or not), the CIFAR-10
binary batches or python pickles, or an ImageFolder tree (train/ and test/ or val/). Where MNIST or
CIFAR-10 are missing and the internet is reachable, torchvision fetches them.
"""
from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from .errors import DataError

MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
STATS = {"mnist": ((0.1307,), (0.3081,)), "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))}
DEFAULT_ROOTS = ("data", os.path.join("..", "shared", "datasets"))


@dataclass
class ImageData:
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]


def resolve_root(root: str = "") -> str:
    """The data directory: explicit setting, else $CDKD_DATA_DIR, else ./data, else ../shared/datasets."""
    if root:
        return root
    if os.environ.get("CDKD_DATA_DIR"):
        return os.environ["CDKD_DATA_DIR"]
    for candidate in DEFAULT_ROOTS:
        if os.path.isdir(candidate) and os.listdir(candidate):
            return candidate
    return DEFAULT_ROOTS[0]


def _find(root: str, names: tuple[str, ...], subdirs: tuple[str, ...]) -> str | None:
    for sub in subdirs:
        d = os.path.join(root, sub)
        if all(os.path.exists(os.path.join(d, n)) or os.path.exists(os.path.join(d, n + ".gz")) for n in names):
            return d
    return None


def _read_idx(path: str, magic: int) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise DataError(f"{path}: not an IDX file (magic {got}, expected {magic})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated ({arr.size} bytes of data, header says {dims})")
    return arr.reshape(dims)


def _idx(d: str, name: str) -> str:
    p = os.path.join(d, name)
    return p if os.path.exists(p) else p + ".gz"


def normalize(x: torch.Tensor, name: str) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in STATS[name])
    return (x - mean) / std


def load_mnist(root: str, download: bool = True) -> ImageData:
    """MNIST resized to 32x32 (the LeNet-5 input) and normalised; all 70k images fit in memory (~290 MB)."""
    names = MNIST_FILES["train"] + MNIST_FILES["test"]
    d = _find(root, names, ("mnist", "MNIST/raw", "."))
    if d is None and download:
        d = _download(root, "mnist")
    if d is None:
        raise DataError(f"MNIST not found under {os.path.abspath(root)} (expected the four IDX files in mnist/); "
                        "set --data-dir or CDKD_DATA_DIR")
    out = []
    for split in ("train", "test"):
        img, lab = MNIST_FILES[split]
        x = torch.from_numpy(_read_idx(_idx(d, img), 2051).copy()).float().div_(255).unsqueeze(1)
        y = torch.from_numpy(_read_idx(_idx(d, lab), 2049).astype(np.int64))
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        out.append(TensorDataset(normalize(x, "mnist"), y))
    return ImageData(out[0], out[1], 10, (1, 32, 32))


def _cifar_records(paths: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    if paths[0].endswith(".bin"):
        raw = np.concatenate([np.fromfile(p, np.uint8) for p in paths])
        if raw.size % 3073:
            raise DataError(f"CIFAR-10 binary batches under {os.path.dirname(paths[0])} are truncated")
        raw = raw.reshape(-1, 3073)
        y, x = raw[:, 0].astype(np.int64), raw[:, 1:]
    else:
        xs, ys = [], []
        for p in paths:
            with open(p, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            xs.append(batch[b"data"])
            ys.extend(batch[b"labels"])
        x, y = np.concatenate(xs), np.asarray(ys, np.int64)
    x = torch.from_numpy(x.reshape(-1, 3, 32, 32).copy()).float().div_(255)
    return normalize(x, "cifar10"), torch.from_numpy(y)


def load_cifar10(root: str, download: bool = True) -> ImageData:
    """CIFAR-10 from the binary version (cifar-10-batches-bin) or the python version (cifar-10-batches-py)."""
    bin_names = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
    py_names = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
    d = _find(root, bin_names, ("cifar-10-batches-bin", "."))
    names = bin_names
    if d is None:
        d, names = _find(root, py_names, ("cifar-10-batches-py", ".")), py_names
    if d is None and download:
        d, names = _download(root, "cifar10"), py_names
    if d is None:
        raise DataError(f"CIFAR-10 not found under {os.path.abspath(root)} (expected cifar-10-batches-bin/ or "
                        "cifar-10-batches-py/); set --data-dir or CDKD_DATA_DIR")
    train = TensorDataset(*_cifar_records([os.path.join(d, n) for n in names[:5]]))
    test = TensorDataset(*_cifar_records([os.path.join(d, names[5])]))
    return ImageData(train, test, 10, (3, 32, 32))


def load_imagefolder(root: str, image_size: int = 32) -> ImageData:
    """An ImageFolder tree: root/train/<class>/*.png and root/test/<class>/ (or root/val/)."""
    from torchvision import datasets, transforms
    test_dir = next((os.path.join(root, s) for s in ("test", "val") if os.path.isdir(os.path.join(root, s))), None)
    if not os.path.isdir(os.path.join(root, "train")) or test_dir is None:
        raise DataError(f"ImageFolder data needs {root}/train and {root}/test (or val)")
    tf = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor(),
                             transforms.Normalize(*STATS["cifar10"])])
    train = datasets.ImageFolder(os.path.join(root, "train"), tf)
    test = datasets.ImageFolder(test_dir, tf)
    if train.classes != test.classes:
        raise DataError(f"{root}: train and test folders have different classes")
    return ImageData(train, test, len(train.classes), (3, image_size, image_size))


def _download(root: str, name: str) -> str | None:
    """Fetch with torchvision; return the directory holding the files, or None when offline."""
    from torchvision import datasets
    print(f"[cdkd] {name} not found under {os.path.abspath(root)}; trying to download it with torchvision ...")
    try:
        if name == "mnist":
            for train in (True, False):
                datasets.MNIST(root, train=train, download=True)
            return os.path.join(root, "MNIST", "raw")
        datasets.CIFAR10(root, train=True, download=True)
        return os.path.join(root, "cifar-10-batches-py")
    except Exception as e:  # offline, proxy, disk
        print(f"[cdkd] download failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
        return None


def load_data(name: str, root: str = "", download: bool = True) -> ImageData:
    root = resolve_root(root)
    if name == "mnist":
        return load_mnist(root, download)
    if name == "cifar10":
        return load_cifar10(root, download)
    if name == "imagefolder":
        return load_imagefolder(root)
    raise DataError(f"unknown dataset {name!r} (mnist, cifar10, imagefolder)")
