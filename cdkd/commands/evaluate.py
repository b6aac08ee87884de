"""Test accuracy (or, for a segmentation student, mIoU) of an exported student (.pt2 or .onnx) on a real data
set's test split.

    cdkd eval runs/x/student.pt2 --data-dir ../shared/datasets              # MNIST (the default)
    cdkd eval runs/x/student.onnx --dataset cifar10 --data-dir /data        # through onnxruntime
    cdkd eval student.pt2 --dataset imagefolder --data-dir DIR              # DIR/test/<class>/*.png, resized
    cdkd eval runs/x/student.pt2 --dataset camvid                            # segmentation: test mIoU

Needs no config, teachers or run directory: the student's input shape is read from the exported file (an
ImageFolder is resized to it). Prints the accuracy, then one JSON line.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import CdkdError, first_line
from .base import Parser, guarded
from .train_teachers import DATASETS


@dataclass
class Exported:
    """An exported student, whichever its format: logits = predict(x) on CPU tensors."""
    predict: Callable[[torch.Tensor], torch.Tensor]
    input_shape: tuple[int, ...]       # without the batch axis
    format: str


def _pt2(path: str) -> Exported:
    if not zipfile.is_zipfile(path):  # (torch.export.load would log a traceback before raising)
        raise CdkdError(f"{path}: cannot read exported student (not a .pt2 archive)")
    program = torch.export.load(path)
    user_inputs = set(program.graph_signature.user_inputs)
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs)
    shape = tuple(int(d) for d in node.meta["val"].shape[1:])  # the batch axis is symbolic
    return Exported(program.module(), shape, "pt2")


def _onnx(path: str) -> Exported:
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    if not all(isinstance(d, int) for d in inp.shape[1:]):
        raise CdkdError(f"{path}: input {inp.name} has no fixed image shape ({inp.shape})")

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {inp.name: x.float().numpy()})[0])
    return Exported(predict, tuple(inp.shape[1:]), "onnx")


def load_student(path: str) -> Exported:
    """The student in `path` (.pt2: torch.export, .onnx: onnxruntime), or one clear CdkdError."""
    loaders = {".pt2": _pt2, ".onnx": _onnx}
    ext = os.path.splitext(path)[1]
    if ext not in loaders:
        raise CdkdError(f"{path}: expected an exported student, .pt2 or .onnx")
    if not os.path.isfile(path):
        raise CdkdError(f"student file not found: {path}")
    try:
        return loaders[ext](path)
    except CdkdError:
        raise
    except Exception as e:  # truncated, not an export, unreadable
        raise CdkdError(f"{path}: cannot read exported student ({first_line(e)})") from None


def evaluate(path: str, dataset: str = "mnist", data_dir: str = "", batch_size: int = 500) -> dict:
    """Top-1 accuracy of the exported student on the test split of `dataset`."""
    from ..data import load_data, load_imagefolder, resolve_root
    from ..supervised import predictions
    student = load_student(path)
    shape = student.input_shape
    data = (load_imagefolder(resolve_root(data_dir), image_size=shape[-1]) if dataset == "imagefolder"
            else load_data(dataset, data_dir, size=shape[1:] if dataset == "camvid" else None))
    if tuple(data.input_shape) != shape:
        raise CdkdError(f"{path} expects input {shape} but the {dataset} test images are {tuple(data.input_shape)}")
    if data.task == "segmentation":  # mIoU over the classes, void ignored, at the label files' size
        from ..tasks.segmentation import iou_from_confusion, mean_iou, segmentation_confusion
        probe = student.predict(data.test[0][0][None])
        if probe.dim() not in (4, 5) or probe.shape[-3] != data.num_classes:
            raise CdkdError(f"{path} gives {tuple(probe.shape)} but {dataset} needs per-pixel logits "
                            f"(batch, {data.num_classes}, height, width): is it a segmentation student?")
        conf = segmentation_confusion(student.predict, data.test, data.num_classes, batch_size=16)
        iou = iou_from_confusion(conf)
        return {"student": path, "format": student.format, "dataset": dataset, "samples": len(data.test),
                "miou": mean_iou(iou), "iou": [round(float(v), 4) for v in iou]}
    logits, y = predictions(student.predict, data.test, batch_size=batch_size)
    if logits.shape[-1] != data.num_classes:
        raise CdkdError(f"{path} predicts {logits.shape[-1]} classes but {dataset} has {data.num_classes}")
    correct = int((logits.argmax(-1) == y).sum())
    return {"student": path, "format": student.format, "dataset": dataset, "samples": len(y), "correct": correct,
            "accuracy": correct / max(1, len(y))}


def parser(prog: str = "cdkd eval") -> Parser:
    p = Parser(prog, __doc__)
    p.add_argument("student", help="exported student: student.pt2 or student.onnx")
    p.add_argument("--dataset", default="mnist", choices=DATASETS)
    p.add_argument("--data-dir", default="", help="data directory (default: $CDKD_DATA_DIR, ./data, "
                   "../shared/datasets)")
    p.add_argument("--batch-size", type=int, default=500)
    return p


def main(argv: list[str] | None = None, prog: str = "cdkd eval") -> int:
    args = parser(prog).parse_args(argv)

    def work() -> int:
        if args.batch_size < 1:
            raise CdkdError(f"--batch-size must be positive, got {args.batch_size}")
        out = evaluate(args.student, args.dataset, args.data_dir, args.batch_size)
        if "miou" in out:
            print(f"mIoU {out['miou']:.4f} ({out['samples']} {args.dataset} test images, {out['format']})")
            print(json.dumps(out))
            return 0
        print(f"accuracy {out['accuracy']:.4f} ({out['correct']}/{out['samples']} {args.dataset} test images, "
              f"{out['format']})")
        print(json.dumps(out))
        return 0
    return guarded(work)
