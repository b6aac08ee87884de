"""The embedded default: an MNIST demo with three LeNet-5 teachers trained here (or reused from a cache)."""
from __future__ import annotations

import os
from typing import Any

import torch

from .data import ImageData, load_data
from .models import create_model
from .supervised import train_classifier
from .teachers import _load_cdkd, save_classifier

TEACHER_EPOCHS = 4

# Distillation config of the demo and the MNIST benchmark (teachers are filled in by `ensure_teachers`).
MNIST_DEMO: dict[str, Any] = {
    "method": "cdfkd_mfs",
    "data": {"name": "mnist"},
    "model": {"student": "mfs_lenet5_half", "nz": 100, "ngf": 32},
    "train": {"iterations": 300, "batch_size": 128, "log_every": 25, "ckpt_every": 50, "sample_every": 100},
    "aggregation": {"num_samples": 600},
}


def ensure_teachers(data: ImageData, dataset: str, arch: str, seeds: list[int], out_dir: str,
                    epochs: int = TEACHER_EPOCHS, force: bool = False, flip_crop: bool = False) -> list[str]:
    """Train one teacher per seed (or reuse a cached checkpoint of the same recipe); return their paths."""
    torch.set_flush_denormal(True)
    paths = []
    for seed in seeds:
        path = os.path.join(out_dir, f"{dataset}-{arch}-seed{seed}.pt")
        if os.path.exists(path) and not force:
            _, _, meta = _load_cdkd(path)
            if meta.get("epochs") == epochs:
                print(f"[cdkd] reusing teacher {path} (test acc {meta['test_acc']:.4f})")
                paths.append(path)
                continue
        torch.manual_seed(seed)
        kwargs = {"num_classes": data.num_classes, "in_chans": data.input_shape[0]}
        model = create_model(arch, **kwargs)
        acc = train_classifier(model, data.train, data.test, epochs, seed=seed, flip_crop=flip_crop,
                               desc=f"teacher seed {seed}")
        save_classifier(path, model, arch, kwargs, data.input_shape,
                        {"test_acc": acc, "seed": seed, "epochs": epochs, "dataset": dataset})
        print(f"[cdkd] trained teacher {path}: test acc {acc:.4f}")
        paths.append(path)
    return paths


def demo_config(teacher_dir: str = "runs/teachers", data_root: str = "") -> dict[str, Any]:
    data = load_data("mnist", data_root)
    paths = ensure_teachers(data, "mnist", "lenet5", [0, 1, 2], teacher_dir)
    cfg = {**MNIST_DEMO, "teachers": [{"path": p} for p in paths]}
    cfg["data"] = {**cfg["data"], "root": data_root}
    return cfg
