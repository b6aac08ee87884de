"""Real data sets, used only to train demo teachers and to evaluate (never by the data-free distillation).

Reads the original distributions from a data directory: MNIST IDX files (gzipped or not), the CIFAR-10 and
CIFAR-100 binary files or python pickles, or an ImageFolder tree (train/ and test/ or val/). Where MNIST or
CIFAR are missing and the internet is reachable, torchvision fetches them.
"""
from __future__ import annotations

import gzip
import zlib
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from .errors import DataError, first_line

MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
STATS = {"mnist": ((0.1307,), (0.3081,)), "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
         "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
DEFAULT_ROOTS = ("data", os.path.join("..", "shared", "datasets"))


@dataclass
class ImageData:
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # (mean, std) the images are normalised by
    val: Dataset | None = None        # a held-out split for choices (CamVid's val/), where the data set has one
    task: str = "classification"      # or "segmentation" (labels are (H, W) maps; cdkd.tasks)


class Remapped(Dataset):
    """A dataset whose images are mapped per channel, x * scale + shift (from one normalisation to another)."""

    def __init__(self, ds: Dataset, scale: torch.Tensor, shift: torch.Tensor) -> None:
        self.ds, self.scale, self.shift = ds, scale, shift

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        x, y = self.ds[i]
        return x * self.scale + self.shift, y


def in_space(data: ImageData, space) -> ImageData:
    """`data` as the generator's input space `space` (mean/std; None: unchanged) sees it, for evaluation: the
    student and the teachers' input maps work in that space, whatever normalisation the data set has."""
    if space is None or data.norm is None or (tuple(space.mean), tuple(space.std)) == tuple(map(tuple, data.norm)):
        return data
    md, sd = (torch.tensor(v).view(-1, 1, 1) for v in data.norm)
    m0, s0 = (torch.tensor(v).view(-1, 1, 1) for v in (space.mean, space.std))
    scale, shift = sd / s0, (md - m0) / s0

    def remap(ds: Dataset) -> Dataset:
        if isinstance(ds, TensorDataset):
            x, y = ds.tensors
            return TensorDataset(x * scale + shift, y)
        return Remapped(ds, scale, shift)
    return ImageData(remap(data.train), remap(data.test), data.num_classes, data.input_shape,
                     (tuple(space.mean), tuple(space.std)), remap(data.val) if data.val is not None else None,
                     data.task)


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


def _set_data_dir_hint() -> str:
    """How to point at the data; inside `ray job submit` (whose entrypoint Ray marks with RAY_JOB_CONFIG_JSON_ENV_VAR)
    the working directory is an uploaded copy, so `../shared/datasets` and `./data` do not exist there."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        return ("set --data-dir to a path on the cluster nodes, or CDKD_DATA_DIR through "
                "--runtime-env-json (inside `ray job submit` the working directory is an uploaded copy)")
    return "set --data-dir or CDKD_DATA_DIR"


def _find(root: str, names: tuple[str, ...], subdirs: tuple[str, ...]) -> str | None:
    for sub in subdirs:
        d = os.path.join(root, sub)
        if all(os.path.exists(os.path.join(d, n)) or os.path.exists(os.path.join(d, n + ".gz")) for n in names):
            return d
    return None


def _read_idx(path: str, magic: int) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # truncated or corrupt .gz, unreadable file
        raise DataError(f"{path}: cannot read ({first_line(e)}); replace the file") from None
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
                        f"{_set_data_dir_hint()}")
    out = []
    for split in ("train", "test"):
        img, lab = MNIST_FILES[split]
        x = torch.from_numpy(_read_idx(_idx(d, img), 2051).copy()).float().div_(255).unsqueeze(1)
        y = torch.from_numpy(_read_idx(_idx(d, lab), 2049).astype(np.int64))
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        out.append(TensorDataset(normalize(x, "mnist"), y))
    return ImageData(out[0], out[1], 10, (1, 32, 32), STATS["mnist"])


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its files and labels, in the binary and the python (pickle) versions."""
    name: str
    num_classes: int
    bin_dir: str
    bin_files: tuple[str, ...]        # train files..., test file (last)
    label_bytes: int                  # bytes before the pixels in a binary record
    label_at: int                     # which of those bytes is the label (CIFAR-100: 1 = fine label)
    py_dir: str
    py_files: tuple[str, ...]
    py_label_key: bytes


CIFAR = {
    "cifar10": CifarLayout("cifar10", 10, "cifar-10-batches-bin",
                           tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",), 1, 0,
                           "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
                           b"labels"),
    "cifar100": CifarLayout("cifar100", 100, "cifar-100-binary", ("train.bin", "test.bin"), 2, 1,
                            "cifar-100-python", ("train", "test"), b"fine_labels"),
}


def _cifar_records(paths: list[str], layout: CifarLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) normalised and labels (N,) from binary records or python pickles."""
    if paths[0].endswith(".bin"):
        record = layout.label_bytes + 3072
        raw = np.concatenate([np.fromfile(p, np.uint8) for p in paths])
        if raw.size == 0 or raw.size % record:
            raise DataError(f"{layout.name} binary files under {os.path.dirname(paths[0])} are truncated "
                            f"({raw.size} bytes is not a whole number of {record}-byte records)")
        raw = raw.reshape(-1, record)
        y, x = raw[:, layout.label_at].astype(np.int64), raw[:, layout.label_bytes:]
    else:
        xs, ys = [], []
        for p in paths:
            try:
                with open(p, "rb") as f:
                    batch = pickle.load(f, encoding="bytes")
                xs.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3072))
                ys.extend(batch[layout.py_label_key])
            except Exception as e:  # truncated pickle, wrong file, missing keys
                raise DataError(f"{p}: not a readable {layout.name} python batch ({type(e).__name__})") from None
        x, y = np.concatenate(xs), np.asarray(ys, np.int64)
        if len(x) != len(y):
            raise DataError(f"{layout.name} python batches under {os.path.dirname(paths[0])}: {len(x)} images "
                            f"but {len(y)} labels")
    if y.size and (y.min() < 0 or y.max() >= layout.num_classes):
        raise DataError(f"{layout.name} files under {os.path.dirname(paths[0])} hold labels outside "
                        f"0..{layout.num_classes - 1}")
    x = torch.from_numpy(x.reshape(-1, 3, 32, 32).copy()).float().div_(255)
    return normalize(x, layout.name), torch.from_numpy(y)


def load_cifar(name: str, root: str, download: bool = True) -> ImageData:
    """CIFAR-10 or CIFAR-100 from the binary version (cifar-10-batches-bin, cifar-100-binary) or the python
    version (cifar-10-batches-py, cifar-100-python)."""
    layout = CIFAR[name]
    d, names = _find(root, layout.bin_files, (layout.bin_dir, ".")), layout.bin_files
    if d is None:
        d, names = _find(root, layout.py_files, (layout.py_dir, ".")), layout.py_files
    if d is None and download:
        d, names = _download(root, name), layout.py_files
    if d is None:
        raise DataError(f"{name.upper().replace('CIFAR', 'CIFAR-')} not found under {os.path.abspath(root)} "
                        f"(expected {layout.bin_dir}/ or {layout.py_dir}/); {_set_data_dir_hint()}")
    train = TensorDataset(*_cifar_records([os.path.join(d, n) for n in names[:-1]], layout))
    test = TensorDataset(*_cifar_records([os.path.join(d, names[-1])], layout))
    return ImageData(train, test, layout.num_classes, (3, 32, 32), STATS[name])


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
    return ImageData(train, test, len(train.classes), (3, image_size, image_size), STATS["cifar10"])


def _download(root: str, name: str) -> str | None:
    """Fetch with torchvision; return the directory holding the files, or None when offline."""
    from torchvision import datasets
    print(f"[cdkd] {name} not found under {os.path.abspath(root)}; trying to download it with torchvision ...")
    try:
        if name == "mnist":
            for train in (True, False):
                datasets.MNIST(root, train=train, download=True)
            return os.path.join(root, "MNIST", "raw")
        if name == "cifar100":
            datasets.CIFAR100(root, train=True, download=True)
            return os.path.join(root, CIFAR[name].py_dir)
        datasets.CIFAR10(root, train=True, download=True)
        return os.path.join(root, CIFAR[name].py_dir)
    except Exception as e:  # offline, proxy, disk
        print(f"[cdkd] download failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
        return None


def load_data(name: str, root: str = "", download: bool = True, size: tuple[int, int] | None = None) -> ImageData:
    root = resolve_root(root)
    if name == "mnist":
        return load_mnist(root, download)
    if name in CIFAR:
        return load_cifar(name, root, download)
    if name == "imagefolder":
        return load_imagefolder(root)
    if name == "camvid":
        return load_camvid(root, size)
    raise DataError(f"unknown dataset {name!r} (mnist, cifar10, cifar100, imagefolder, camvid)")


def load_camvid(root: str, size: tuple[int, int] | None = None) -> ImageData:
    """CamVid at working size `size` (H, W; default 120x160): train/val labels resized with the images, test
    labels at the files' size (mIoU is scored there). `num_classes` = 11 (void ignored)."""
    from . import camvid
    size = tuple(size or camvid.DEFAULT_SIZE)
    d = camvid.find_root(root)
    if d is None:
        raise DataError(f"CamVid not found under {os.path.abspath(root)} (expected camvid/train.txt in the SegNet "
                        f"layout); {_set_data_dir_hint()}")
    train = camvid.load_split(d, "train", size)
    val = camvid.load_split(d, "val", size, "file")
    test = camvid.load_split(d, "test", size, "file")
    return ImageData(train, test, len(camvid.CLASSES), (3, *size), camvid.NORM, val=val, task="segmentation")
