"""The task seam: what differs between classifying an image and labelling its pixels, behind one interface.

The engine and the losses are shape-generic (logits (K, B, C) or (K, B, C, H, W), `losses.class_last`); what is
not — how teachers' outputs are checked, the test and validation metrics, the probe agreement, the sample grids,
what the exported student returns — is a `Task`, chosen once from the teachers' output (`task_of`).
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from .classification import Classification
from .segmentation import Segmentation


class Task(Protocol):
    name: str                # "classification" | "segmentation"
    metric: str              # the headline test metric: "acc" | "miou"
    logits_dims: int         # axes of one teacher's logits: 2 (B, C) or 4 (B, C, H, W)

    def evaluate(self, teachers: Callable[[torch.Tensor], torch.Tensor], student: nn.Module, ds: Dataset,
                 num_classes: int, device: torch.device,
                 aggregator: nn.Module | None = None) -> dict[str, Any]: ...
    def score(self, model: nn.Module, ds: Dataset, num_classes: int, device: torch.device) -> float: ...
    def agreement(self, s: torch.Tensor, t: torch.Tensor) -> dict[str, float]: ...
    def sample_grid(self, x: torch.Tensor, teacher_logits: torch.Tensor | None) -> torch.Tensor: ...
    def output(self, num_classes: int) -> str: ...


TASKS: dict[str, Task] = {"classification": Classification(), "segmentation": Segmentation()}


def task_of(logits: torch.Tensor) -> Task | None:
    """The task whose teachers give logits of this shape ((B, C) or (B, C, H, W)); None for any other."""
    return next((t for t in TASKS.values() if isinstance(logits, torch.Tensor) and logits.dim() == t.logits_dims),
                None)


def model_task(model: nn.Module) -> str:
    """The task a model (teacher architecture or student) is built for: dense models label pixels."""
    return "segmentation" if getattr(model, "dense", False) else "classification"


def get_task(name: str) -> Task:
    return TASKS[name]


__all__ = ["TASKS", "Classification", "Segmentation", "Task", "get_task", "model_task", "task_of"]
