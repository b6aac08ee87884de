"""Checkpoints written atomically, and the self-contained exported student.

A run checkpoint is one dict: engine state + config + RNG state. It is written to a temporary file in
the same directory and renamed over the old one, so a crash never leaves a half-written `last.pt`.
"""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .errors import CdkdError, first_line


def atomic_save(obj: Any, path: str, keep_previous: str = "") -> None:
    """Write to a temporary file, then rename over `path`: a crash or a full disk leaves the old file intact
    (and no temporary file behind). With `keep_previous`, the old `path` becomes that file first (a hard
    link renamed into place, so `path` exists at every moment)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and os.path.exists(path):
            link = f"{keep_previous}.tmp-{os.getpid()}"
            if os.path.exists(link):
                os.remove(link)
            try:
                os.link(path, link)
            except OSError:  # a file system without hard links: copy
                import shutil
                shutil.copyfile(path, link)
            os.replace(link, keep_previous)
        os.replace(tmp, path)
    except BaseException as e:  # an interrupt, too, must leave no temporary file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        if not isinstance(e, (OSError, RuntimeError)):
            raise
        # full disk, read-only or missing directory (torch wraps some as RuntimeError)
        kept = f"; the previous {os.path.basename(path)} is kept" if os.path.exists(path) else ""
        raise CdkdError(f"cannot write {path} ({first_line(e)}){kept}") from None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_run_checkpoint(path: str) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CdkdError(f"{path}: cannot read run checkpoint ({first_line(e)})") from None


class AggregatedStudent(nn.Module):
    """Student + header aggregation in one module: x (B, ...) -> logits (B, C). This is what gets exported."""

    def __init__(self, student: nn.Module, aggregator: nn.Module | None = None) -> None:
        super().__init__()
        self.student = student
        self.aggregator = aggregator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.student(x)  # (K, B, C)
        return s.mean(0) if self.aggregator is None else self.aggregator(s)


def export_student(student: nn.Module, aggregator: nn.Module | None, input_shape: tuple[int, ...], path: str) -> None:
    """torch.export the eval-mode student with its aggregation; loads with `torch.export.load` alone."""
    model = AggregatedStudent(student, aggregator).eval()
    example = (torch.randn(2, *input_shape),)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
    tmp = f"{os.path.splitext(path)[0]}.tmp-{os.getpid()}.pt2"
    torch.export.save(program, tmp)
    os.replace(tmp, path)


def load_exported(path: str) -> nn.Module:
    """The exported student as a plain module: needs torch only, not cdkd."""
    return torch.export.load(path).module()
