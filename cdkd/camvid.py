"""CamVid (the SegNet layout): 11 classes plus void, any image size, read into memory at a working size.

Layout under `<data dir>/camvid/` (or the directory itself): `train/ val/ test/` RGB PNGs, `trainannot/ ...`
label PNGs (uint8 ids 0..10, 11 = void), and `train.txt val.txt test.txt` whose lines are
`/SegNet/CamVid/<split>/<name>.png /SegNet/CamVid/<split>annot/<name>.png` (the prefix is stripped). The half-size
copy in ../shared is 240x180, a user's own is 480x360: nothing here assumes a size. Images are resized to the
working size (bilinear, antialiased); training labels by nearest neighbour; evaluation labels stay at the files'
size, and predictions are upsampled to them (`cdkd.tasks.segmentation`).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .errors import DataError, first_line

CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
           "Bicyclist")
VOID = 11
# ImageNet's mean/std, the torchvision segmentation convention
NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# SegNet's CamVid colours, void black
PALETTE = torch.tensor([[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222],
                        [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0],
                        [0, 128, 192], [0, 0, 0]], dtype=torch.uint8)
PREFIX = "/SegNet/CamVid/"
DEFAULT_SIZE = (120, 160)  # (H, W): 2/3 of the half-size copy, 1/3 of the originals; README "Segmentation"


def find_root(root: str) -> str | None:
    """The CamVid directory: `root/camvid` or `root` itself, whichever has train.txt."""
    for d in (os.path.join(root, "camvid"), root):
        if os.path.isfile(os.path.join(d, "train.txt")):
            return d
    return None


def read_list(d: str, split: str) -> list[tuple[str, str]]:
    """(image, label) paths of one split, from its list file."""
    path = os.path.join(d, f"{split}.txt")
    if not os.path.isfile(path):
        raise DataError(f"CamVid list {path} not found")
    pairs = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataError(f"{path}:{n}: expected '<image> <label>', got {line.strip()!r}")
            pairs.append(tuple(os.path.join(d, p[len(PREFIX):] if p.startswith(PREFIX) else p.lstrip("/"))
                               for p in parts))
    if not pairs:
        raise DataError(f"CamVid list {path} is empty")
    return pairs


def _png(path: str, mode: str) -> np.ndarray:
    from PIL import Image
    if not os.path.isfile(path):
        raise DataError(f"CamVid file {path} not found (listed in its split's .txt)")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert(mode) if im.mode != mode else im)
    except (OSError, SyntaxError, ValueError) as e:  # truncated or not a PNG
        raise DataError(f"{path}: cannot read ({first_line(e)}); replace the file") from None


def load_split(d: str, split: str, size: tuple[int, int], label_size: str = "work",
               limit: int | None = None) -> TensorDataset:
    """One split as (images (N, 3, H, W) normalised, labels (N, h, w) int64); `label_size`: 'work' resizes the
    labels to (H, W) by nearest neighbour (training), 'file' keeps the files' size (evaluation)."""
    pairs = read_list(d, split)[:limit]
    xs, ys, file_size = [], [], None
    for img_path, lab_path in pairs:
        img, lab = _png(img_path, "RGB"), _png(lab_path, "L")
        if img.shape[:2] != lab.shape[:2]:
            raise DataError(f"{lab_path}: label is {lab.shape[1]}x{lab.shape[0]} but its image is "
                            f"{img.shape[1]}x{img.shape[0]}")
        if file_size is None:
            file_size = img.shape[:2]
        elif img.shape[:2] != file_size:
            raise DataError(f"{img_path}: {img.shape[1]}x{img.shape[0]}, but the split's first image is "
                            f"{file_size[1]}x{file_size[0]}; one size per split")
        if lab.max() > VOID:
            raise DataError(f"{lab_path}: label id {int(lab.max())} outside 0..{VOID} (11 = void)")
        xs.append(torch.from_numpy(img.copy()).permute(2, 0, 1))
        ys.append(torch.from_numpy(lab.astype(np.int64)))
    x = torch.stack(xs).float().div_(255)
    y = torch.stack(ys)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        if label_size == "work":
            y = F.interpolate(y[:, None].float(), size=size, mode="nearest")[:, 0].long()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORM)
    return TensorDataset((x - mean) / std, y)


def median_frequency_weights(labels: torch.Tensor, num_classes: int = len(CLASSES)) -> torch.Tensor:
    """SegNet's class balancing: w_c = median(f) / f_c, f_c = pixels of c / pixels of images that contain c."""
    counts = torch.zeros(num_classes)
    present = torch.zeros(num_classes)
    for y in labels:
        c = torch.bincount(y.flatten(), minlength=VOID + 1)[:num_classes].float()
        counts += c
        present += (c > 0).float() * y.numel()
    freq = counts / present.clamp_min(1)
    return freq.median() / freq.clamp_min(1e-12)


def colorize(labels: torch.Tensor) -> torch.Tensor:
    """Label maps (B, H, W) -> RGB images (B, 3, H, W) in [0, 1] with the CamVid palette (void black)."""
    return PALETTE[labels.clamp(0, VOID)].permute(0, 3, 1, 2).float() / 255
