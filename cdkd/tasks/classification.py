"""Image classification: logits (B, C), top-1 accuracy."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..supervised import accuracy, eval_mode, predictions


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Images min-max scaled to [0, 1] over the whole batch (torchvision's `save_image(normalize=True)`)."""
    x = x.float()
    return (x - x.min()) / (x.max() - x.min()).clamp_min(1e-5)


class Classification:
    name, metric, logits_dims = "classification", "acc", 2

    @torch.no_grad()
    def evaluate(self, teachers: Callable[[torch.Tensor], torch.Tensor], student: nn.Module, ds: Dataset,
                 num_classes: int, device: torch.device, aggregator: nn.Module | None = None) -> dict[str, Any]:
        """Test accuracy of each teacher, the teacher ensemble (mean logits), the student and its headers."""
        teacher_logits, y = predictions(teachers, ds, device=device)
        with eval_mode(student):
            s, _ = predictions(student, ds, device=device)
        acc = lambda logits: (logits.argmax(-1) == y).float().mean().item()  # noqa: E731
        out = {"teacher_acc": [acc(t) for t in teacher_logits], "ensemble_acc": acc(teacher_logits.mean(0)),
               "student_acc": acc(s.mean(0)), "header_acc": [acc(h) for h in s]}
        if aggregator is not None:
            out["student_acc_attention"] = acc(aggregator(s.to(device)).cpu())
        return out

    def score(self, model: nn.Module, ds: Dataset, num_classes: int, device: torch.device) -> float:
        return accuracy(model, ds, device)

    def agreement(self, s: torch.Tensor, t: torch.Tensor) -> dict[str, float]:
        """Top-1 agreement and mean total-variation distance of student vs teacher-ensemble logits (N, C)."""
        return {"probe_agreement": (s.argmax(-1) == t.argmax(-1)).float().mean().item(),
                "probe_tv": 0.5 * (F.softmax(s, -1) - F.softmax(t, -1)).abs().sum(-1).mean().item()}

    def sample_grid(self, x: torch.Tensor, teacher_logits: torch.Tensor | None) -> torch.Tensor:
        """The generated images, min-max scaled to [0, 1] over the batch."""
        return to_unit(x)

    def output(self, num_classes: int) -> str:
        return f"logits (batch, {num_classes})"
