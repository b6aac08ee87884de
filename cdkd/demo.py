"""The embedded default: an MNIST demo with three LeNet-5 teachers trained here (or reused from a cache)."""
from __future__ import annotations

import os
import time
from typing import Any

import torch

from .data import ImageData, load_data
from .errors import CdkdError
from .models import create_model
from .supervised import train_classifier
from .tasks import model_task
from .teachers import InputNorm, load_cdkd, save_classifier

TEACHER_EPOCHS = 4

# Distillation config of the demo and the MNIST benchmark (teachers are filled in by `ensure_teachers`).
MNIST_DEMO: dict[str, Any] = {
    "method": "cdfkd_mfs",
    "data": {"name": "mnist"},
    "model": {"student": "mfs_lenet5_half", "nz": 100, "ngf": 32},
    "train": {"iterations": 300, "batch_size": 128, "log_every": 25, "ckpt_every": 50, "sample_every": 100},
    "aggregation": {"num_samples": 600},
}


# Teacher recipes per data set: MNIST's is the demo's (4 epochs, cosine); CIFAR's is the fast CPU recipe of
# bench/cifar.py: one-cycle, crop + flip, channels_last, bf16 autocast where the CPU has AMX (amp "auto").
# WRN-16-2, batch 128, 2 cores: without AMX 0.437 s/step fp32 channels_last vs 0.601 NCHW, bf16 slower (0.520);
# with AMX bf16 is 1.9x faster than fp32 channels_last (0.339 vs 0.640 s/step, measured with another job running).
# More epochs give better teachers (`--epochs`).
RECIPES: dict[str, dict[str, Any]] = {
    "mnist": {"epochs": TEACHER_EPOCHS, "lr": 0.1, "schedule": "cosine", "flip_crop": False},
    "cifar": {"epochs": 6, "lr": 0.2, "schedule": "onecycle", "flip_crop": True, "channels_last": True,
              "amp": "auto"},
    # CamVid from scratch (no ImageNet weights here): Adam 2e-3, wd 2e-4 (ENet's), cosine, batch 8, SegNet's
    # median-frequency class weights, scale 1-1.5 / crop / flip; fp32 (bf16 is no faster for MobileNetV3).
    "camvid": {"epochs": 100, "lr": 2e-3, "batch_size": 8, "weight_decay": 2e-4},
}


def teacher_recipe(dataset: str, epochs: int | None = None) -> dict[str, Any]:
    recipe = dict(RECIPES[dataset if dataset in RECIPES else "cifar" if dataset.startswith("cifar") else "mnist"])
    if dataset == "imagefolder":
        recipe["flip_crop"] = True
    if epochs:
        recipe["epochs"] = epochs
    return recipe


def teacher_path(out_dir: str, dataset: str, arch: str, seed: int) -> str:
    """Where `ensure_teachers` keeps the teacher of one seed."""
    return os.path.join(out_dir, f"{dataset}-{arch}-seed{seed}.pt")


def ensure_teachers(data: ImageData, dataset: str, arch: str, seeds: list[int], out_dir: str,
                    epochs: int | None = None, force: bool = False) -> list[str]:
    """Train one teacher per seed (or reuse a cached checkpoint of the same recipe); return their paths.

    Each checkpoint's meta holds the recipe, the test accuracy (reported, never used to choose anything) and
    the training time.
    """
    torch.set_flush_denormal(True)
    recipe = teacher_recipe(dataset, epochs)
    paths = []
    for seed in seeds:
        path = teacher_path(out_dir, dataset, arch, seed)
        if os.path.exists(path) and not force:
            _, shape, meta, _ = load_cdkd(path)
            if meta.get("epochs") == recipe["epochs"] and meta.get("recipe", recipe) == recipe \
                    and tuple(shape) == tuple(data.input_shape):
                score = f"test mIoU {meta['test_miou']:.4f}" if "test_miou" in meta \
                    else f"test acc {meta['test_acc']:.4f}"
                print(f"[cdkd] reusing teacher {path} ({score})")
                paths.append(path)
                continue
        torch.manual_seed(seed)
        kwargs = {"num_classes": data.num_classes, "in_chans": data.input_shape[0]}
        model = create_model(arch, **kwargs)
        if model_task(model) != data.task:
            raise CdkdError(f"--arch {arch} is a {model_task(model)} model but {dataset} is a {data.task} data set "
                            "(CamVid: --arch lraspp_mbv3_large)")
        t0 = time.perf_counter()
        if data.task == "segmentation":
            scores = _train_segmentation_teacher(model, data, seed, recipe)
        else:
            scores = {"test_acc": train_classifier(model, data.train, data.test, seed=seed,
                                                   desc=f"teacher seed {seed}", **recipe)}
        train_s = round(time.perf_counter() - t0, 1)
        save_classifier(path, model, arch, kwargs, data.input_shape,
                        {**scores, "seed": seed, "epochs": recipe["epochs"], "dataset": dataset,
                         "recipe": recipe, "train_s": train_s}, InputNorm(*data.norm) if data.norm else None)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float))
        print(f"[cdkd] trained teacher {path}: {shown} in {train_s:.0f}s")
        paths.append(path)
    return paths


def _train_segmentation_teacher(model: torch.nn.Module, data: ImageData, seed: int, recipe: dict[str, Any]
                                ) -> dict[str, Any]:
    """Train on data.train (watching val mIoU), then report val and test mIoU with per-class test IoU."""
    from .camvid import median_frequency_weights
    from .tasks.segmentation import evaluate_segmenter, train_segmenter
    weights = median_frequency_weights(data.train.tensors[1], data.num_classes)
    train_segmenter(model, data.train, data.val, data.num_classes, seed=seed, class_weights=weights,
                    desc=f"teacher seed {seed}", eval_every=max(1, recipe["epochs"] // 5), **recipe)
    val = evaluate_segmenter(model, data.val, data.num_classes) if data.val is not None else {}
    test = evaluate_segmenter(model, data.test, data.num_classes)
    return {"val_miou": val.get("miou", float("nan")), "test_miou": test["miou"], "test_iou": test["iou"],
            "test_pixel_acc": test["pixel_acc"]}


def demo_config(teacher_dir: str = "runs/teachers", data_root: str = "", train: bool = True) -> dict[str, Any]:
    """The demo's config; its teachers are trained or reused first, unless `train=False` (only their paths)."""
    if train:
        paths = ensure_teachers(load_data("mnist", data_root), "mnist", "lenet5", [0, 1, 2], teacher_dir)
    else:
        paths = [teacher_path(teacher_dir, "mnist", "lenet5", seed) for seed in (0, 1, 2)]
    cfg = {**MNIST_DEMO, "teachers": [{"path": p} for p in paths]}
    cfg["data"] = {**cfg["data"], "root": data_root}
    return cfg
