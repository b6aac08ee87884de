"""Attention-based aggregation of the student's headers from N real labeled samples (spec 2.5).

A shared Linear(C -> 1) scores each header's logits; softmax over headers gives per-sample weights and
the output is the weighted sum of header logits. Only the aggregator is trained (the student is frozen);
the epoch is selected on a validation split of the N samples, never on the test set. Dense (segmentation)
headers are weighted per pixel: the score reads each pixel's C logits, and void pixels (label >= C) are ignored.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from .supervised import eval_mode, predictions, subset


class AttentionAggregator(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.score = nn.Linear(num_classes, 1)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if s.dim() >= 5:  # (K, B, C, H, W): per pixel
            alpha = F.softmax(self.score(s.movedim(2, -1)), dim=0).movedim(-1, 2)  # (K, B, 1, H, W)
        else:
            alpha = F.softmax(self.score(s), dim=0)  # (K, B, 1): weights over headers, per sample
        return (alpha * s).sum(0)                # (B, C[, H, W])


def _void_ignored(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.where(y >= num_classes, torch.full_like(y, -100), y)


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    keep = y >= 0
    return (logits.argmax(1)[keep] == y[keep]).float().mean().item()


def fit_aggregator(student: nn.Module, train: Dataset, num_samples: int, num_classes: int, val_fraction: float = 0.2,
                   epochs: int = 100, lr: float = 0.01, batch_size: int = 100, seed: int = 0,
                   device: str | torch.device = "cpu") -> tuple[AttentionAggregator, dict[str, float]]:
    """Train the aggregator on N real samples (a seeded subset of `train`), select the epoch on a held-out split."""
    data = subset(train, num_samples, seed)
    with eval_mode(student):
        logits, y = predictions(student, data, device=device)  # (K, N, C[, H, W]): the student is frozen, run it once
    y = _void_ignored(y, num_classes)
    n_val = max(1, int(round(val_fraction * num_samples)))
    s_tr, y_tr, s_val, y_val = logits[:, n_val:], y[n_val:], logits[:, :n_val], y[:n_val]
    torch.manual_seed(seed)
    agg = AttentionAggregator(num_classes)
    opt = torch.optim.Adam(agg.parameters(), lr)
    best, best_acc = copy.deepcopy(agg.state_dict()), -1.0
    for _ in range(epochs):
        perm = torch.randperm(s_tr.shape[1])
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(agg(s_tr[:, idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc = _accuracy(agg(s_val), y_val)
        if acc > best_acc:
            best_acc, best = acc, copy.deepcopy(agg.state_dict())
    agg.load_state_dict(best)
    mean_acc = _accuracy(s_val.mean(0), y_val)
    return agg.to(device), {"agg_val_acc": best_acc, "mean_val_acc": mean_acc}
