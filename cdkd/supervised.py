"""Supervised training and evaluation of classifiers on real data: demo/benchmark teachers, and accuracy reports."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .progress import Progress


def _loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, drop_last=shuffle)


def augment(x: torch.Tensor) -> torch.Tensor:
    """Random crop with 4-pixel padding and horizontal flip, on a batch (CIFAR recipe)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    i, j = torch.randint(0, 9, (2,))
    x = padded[:, :, i:i + h, j:j + w]
    flip = torch.rand(b, device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def train_classifier(model: nn.Module, train: Dataset, test: Dataset, epochs: int, lr: float = 0.1,
                     batch_size: int = 128, seed: int = 0, flip_crop: bool = False, desc: str = "teacher",
                     schedule: str = "cosine", channels_last: bool = False, amp: str = "none") -> float:
    """SGD (momentum 0.9, Nesterov, wd 5e-4) with a per-step cosine or one-cycle schedule; returns test accuracy.

    `channels_last` and `amp='bf16'` are CPU speed settings (README "CIFAR" says where each wins); `amp='auto'`
    is bf16 where bf16 convolutions are fast (`teacher_pool.fast_bf16`), else none.
    """
    from .teacher_pool import autocast, fast_bf16
    if amp == "auto":
        amp = "bf16" if fast_bf16(torch.device("cpu")) else "none"
    torch.manual_seed(seed)
    loader = _loader(train, batch_size, True, seed)
    opt = torch.optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    total = epochs * len(loader)
    if schedule == "onecycle":  # warm-up then anneal: reaches a given accuracy in fewer epochs (super-convergence)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=total, pct_start=0.25)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.5 * (1 + math.cos(math.pi * it / total)))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    progress = Progress(total, desc)
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            x = (augment(x) if flip_crop else x).contiguous(memory_format=fmt)
            with autocast("cpu", amp):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            progress.update({"epoch": epoch + 1, "loss": loss.item()})
    progress.close()
    model.to(memory_format=torch.contiguous_format)
    return accuracy(model, test)


@torch.no_grad()
def predictions(predict: Callable[[torch.Tensor], torch.Tensor], ds: Dataset, batch_size: int = 1000,
                device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated outputs of `predict` over a dataset, and its labels (outputs on CPU).

    Outputs are (B, C) or (K, B, C), or dense (B, C, H, W) / (K, B, C, H, W): joined along their batch axis."""
    outs, labels = [], []
    for x, y in _loader(ds, batch_size, False):
        outs.append(predict(x.to(device)).float().cpu())
        labels.append(y)
    dim = outs[0].dim() - (4 if outs[0].dim() >= 4 else 2)
    return torch.cat(outs, dim=dim), torch.cat(labels)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode inside the block, its previous mode restored after (BN running stats untouched)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, ds: Dataset, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy of `model` (logits (B, C), or (K, B, C) headers averaged) on `ds`, in eval mode."""
    with eval_mode(model):
        logits, y = predictions(model, ds, device=device)
    if logits.dim() == 3:
        logits = logits.mean(0)
    return (logits.argmax(-1) == y).float().mean().item()


def subset(ds: Dataset, n: int, seed: int = 0) -> TensorDataset:
    """A fixed random subset of n examples as an in-memory TensorDataset."""
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    xs, ys = zip(*(ds[int(i)] for i in idx))
    labels = torch.stack(ys) if isinstance(ys[0], torch.Tensor) and ys[0].dim() else torch.as_tensor(ys)
    return TensorDataset(torch.stack(xs), labels)

