"""Checkpoints written atomically, and the self-contained exported student.

A run checkpoint is one dict: engine state + config + RNG state. It is written to a temporary file in
the same directory and renamed over the old one, so a crash never leaves a half-written `last.pt`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
from typing import Any, Callable

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

    def __init__(self, student: nn.Module, aggregator: nn.Module | None = None,
                 pixels_in: dict[str, list[float]] | None = None) -> None:
        super().__init__()
        self.student = student
        self.aggregator = aggregator
        self.pixels_in = pixels_in is not None  # raw [0, 1] pixels in, normalised here (mixed-normalisation teachers)
        if pixels_in is not None:
            self.register_buffer("mean", torch.tensor(pixels_in["mean"]).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(pixels_in["std"]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pixels_in:
            x = (x - self.mean) / self.std
        s = self.student(x)  # (K, B, C)
        return s.mean(0) if self.aggregator is None else self.aggregator(s)


def _write_atomically(path: str, write: Callable[[str], None]) -> None:
    """`write(tmp)` to a temporary file beside `path` (same extension), then rename it over `path`."""
    stem, ext = os.path.splitext(path)
    tmp = f"{stem}.tmp-{os.getpid()}{ext}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _example(input_shape: tuple[int, ...]) -> tuple[tuple[torch.Tensor], torch.export.Dim]:
    """A batch of 2 (a batch of 1 would specialise the batch axis) and the dynamic batch dimension."""
    return (torch.randn(2, *input_shape),), torch.export.Dim("batch", min=1, max=65536)


def export_program(model: nn.Module, input_shape: tuple[int, ...], path: str) -> None:
    """torch.export an eval-mode module with a dynamic batch axis to `path` (.pt2)."""
    example, batch = _example(input_shape)
    with torch.no_grad():
        program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
    _write_atomically(path, lambda tmp: torch.export.save(program, tmp))


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.WARNING):
    """The exporter's optimisation passes log ~20 INFO lines per export ("Replaced initializer ..."); a Ray
    worker's console shows INFO, so these loggers are held at `level` while it runs."""
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.level))
    try:
        yield
    finally:
        for lg, lv in zip(loggers, before):
            lg.setLevel(lv)


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str) -> str:
    """ONNX (one file, input `x` (batch, *input_shape) -> `logits`, dynamic batch); returns the exporter used.

    The dynamo exporter (torch.export + onnxscript) is tried first: it is the one that works for the students
    here (measured: `mfs_lenet5_half` exports with it and matches PyTorch within 1e-7 under onnxruntime). The
    TorchScript exporter (`dynamo=False`) is the fallback for a model the dynamo path cannot translate.
    """
    example, batch = _example(input_shape)
    names = {"input_names": ["x"], "output_names": ["logits"]}

    def dynamo(tmp: str) -> None:
        torch.onnx.export(model, example, tmp, dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=({0: batch},), **names)

    def torchscript(tmp: str) -> None:
        torch.onnx.export(model, example, tmp, dynamo=False, dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
                          **names)

    with torch.no_grad(), quiet_loggers("onnx_ir", "onnxscript"):
        try:
            _write_atomically(path, dynamo)
            return "dynamo"
        except Exception as e:  # an operator or construct the dynamo exporter cannot translate
            dynamo_error = first_line(e)
        try:
            _write_atomically(path, torchscript)
        except Exception as e:
            raise CdkdError(f"cannot export {path} to ONNX (dynamo: {dynamo_error}; torchscript: {first_line(e)})"
                            ) from None
    return "torchscript"


def export_student(student: nn.Module, aggregator: nn.Module | None, input_shape: tuple[int, ...],
                   path: str, pixels_in: dict[str, list[float]] | None = None) -> dict[str, str]:
    """The eval-mode student with its aggregation as `path` (.pt2, loads with `torch.export.load` alone) and,
    beside it, the same module as ONNX (.onnx): returns {"pt2": path, "onnx": path, "onnx_exporter": name}.

    A student that neither ONNX exporter can translate still gets its .pt2 (a finished run is not failed for
    it): then "onnx" is None and "onnx_error" says why.
    """
    model = AggregatedStudent(student, aggregator, pixels_in).eval()
    onnx_path = f"{os.path.splitext(path)[0]}.onnx"
    export_program(model, input_shape, path)
    try:
        return {"pt2": path, "onnx": onnx_path, "onnx_exporter": export_onnx(model, input_shape, onnx_path)}
    except CdkdError as e:
        print(f"[cdkd] warning: {e}")
        return {"pt2": path, "onnx": None, "onnx_error": str(e)}


def load_exported(path: str) -> nn.Module:
    """The exported student as a plain module: needs torch only, not cdkd."""
    return torch.export.load(path).module()
