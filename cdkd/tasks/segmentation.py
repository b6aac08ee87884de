"""The dense-prediction task: per-pixel logits (B, C, H, W), mIoU with a void label, CamVid-style teachers.

Training a teacher (`train_segmenter`) and the metrics live here; the engine reaches them through the task seam
(`cdkd.tasks`), so the distillation loop has no segmentation branch of its own.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..progress import Progress
from ..supervised import eval_mode

IGNORE = 11  # CamVid's void id; any label >= num_classes is ignored


def confusion(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts of (true, predicted) over the pixels whose label is a class (labels >= C are void)."""
    keep = (y >= 0) & (y < num_classes)
    idx = y[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def iou_from_confusion(conf: torch.Tensor) -> torch.Tensor:
    """Per-class IoU = TP / (TP + FP + FN); NaN for a class absent from both labels and predictions."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def mean_iou(iou: torch.Tensor) -> float:
    """The mean over the classes that occur (NaN entries left out)."""
    return float(iou[~iou.isnan()].mean()) if (~iou.isnan()).any() else float("nan")


@torch.no_grad()
def segmentation_confusion(predict: Callable[[torch.Tensor], torch.Tensor], ds: Dataset, num_classes: int,
                           batch_size: int = 16, device: str | torch.device = "cpu") -> torch.Tensor:
    """Confusion over a dataset of (image, label map); logits (B, C, h, w) or headers (K, B, C, h, w), averaged,
    are upsampled (bilinear) to the label's size, so a model working at a reduced size is scored at the files'."""
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for x, y in DataLoader(ds, batch_size=batch_size, shuffle=False):
        logits = predict(x.to(device)).float().cpu()
        if logits.dim() == 5:
            logits = logits.mean(0)
        if logits.shape[-2:] != y.shape[-2:]:
            logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        conf += confusion(logits.argmax(1), y, num_classes)
    return conf


def evaluate_segmenter(model: nn.Module, ds: Dataset, num_classes: int,
                       device: str | torch.device = "cpu") -> dict[str, float | list[float]]:
    """{'miou', 'iou' (per class), 'pixel_acc'} of `model` on `ds`, in eval mode."""
    with eval_mode(model):
        conf = segmentation_confusion(model, ds, num_classes, device=device)
    iou = iou_from_confusion(conf)
    return {"miou": mean_iou(iou), "iou": [round(float(v), 4) for v in iou],
            "pixel_acc": float(conf.diag().sum() / conf.sum().clamp_min(1))}


def scale_crop_flip(x: torch.Tensor, y: torch.Tensor, max_scale: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """One random scale in [1, max_scale] per batch, a random crop back to the input size, per-image flips."""
    b, _, h, w = x.shape
    s = 1.0 + torch.rand(()).item() * (max_scale - 1.0)
    if s > 1.01:
        hs, ws = int(h * s), int(w * s)
        x = F.interpolate(x, size=(hs, ws), mode="bilinear", align_corners=False)
        y = F.interpolate(y[:, None].float(), size=(hs, ws), mode="nearest")[:, 0].long()
        i, j = torch.randint(0, hs - h + 1, ()).item(), torch.randint(0, ws - w + 1, ()).item()
        x, y = x[:, :, i:i + h, j:j + w], y[:, i:i + h, j:j + w]
    flip = torch.rand(b) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x), torch.where(flip.view(-1, 1, 1), y.flip(2), y)


def train_segmenter(model: nn.Module, train: Dataset, val: Dataset | None, num_classes: int, epochs: int,
                    lr: float = 2e-3, batch_size: int = 8, weight_decay: float = 2e-4, seed: int = 0,
                    class_weights: torch.Tensor | None = None, desc: str = "teacher",
                    eval_every: int = 0) -> dict[str, float]:
    """Adam with per-step cosine decay, class-weighted CE ignoring void, scale/crop/flip augmentation.

    Returns the last validation figures (mIoU on `val` every `eval_every` epochs is printed, for watching only).
    """
    torch.manual_seed(seed)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(model.parameters(), lr, weight_decay=weight_decay)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.5 * (1 + math.cos(math.pi * it / total)))
    progress = Progress(total, desc)
    last: dict[str, float] = {}
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            x, y = scale_crop_flip(x, y)
            loss = F.cross_entropy(model(x), y, weight=class_weights, ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            progress.update({"epoch": epoch + 1, "loss": loss.item(), **last})
        if val is not None and eval_every and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            last = {"val_miou": round(evaluate_segmenter(model, val, num_classes)["miou"], 4)}
            print(f"[cdkd] {desc} epoch {epoch + 1}: val mIoU {last['val_miou']:.4f}", flush=True)
    progress.close()
    return last


class Segmentation:
    """Per-pixel classification: logits (B, C, H, W); mIoU over the classes, labels >= C (void) ignored."""
    name, metric, logits_dims = "segmentation", "miou", 4

    @torch.no_grad()
    def evaluate(self, teachers: Callable[[torch.Tensor], torch.Tensor], student: nn.Module, ds: Dataset,
                 num_classes: int, device: torch.device, aggregator: nn.Module | None = None) -> dict[str, Any]:
        """Test mIoU (and per-class IoU) of each teacher, the ensemble (mean logits), the student (mean of its
        headers), each header, and the attention-aggregated student; confusions are accumulated batch by batch."""
        confs: dict[str, torch.Tensor] = {}

        def add(name: str, logits: torch.Tensor, y: torch.Tensor) -> None:
            if logits.shape[-2:] != y.shape[-2:]:
                logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
            c = confusion(logits.argmax(1), y, num_classes)
            confs[name] = confs[name] + c if name in confs else c

        with eval_mode(student):
            for x, y in DataLoader(ds, batch_size=16, shuffle=False):
                x = x.to(device)
                t = teachers(x).float().cpu()
                s = student(x).float()
                for k, tk in enumerate(t):
                    add(f"teacher{k}", tk, y)
                add("ensemble", t.mean(0), y)
                add("student", s.mean(0).cpu(), y)
                for k, sk in enumerate(s.cpu()):
                    add(f"header{k}", sk, y)
                if aggregator is not None:
                    add("attention", aggregator(s).cpu(), y)
        iou = {name: iou_from_confusion(c) for name, c in confs.items()}
        k_t = sum(name.startswith("teacher") for name in iou)
        k_s = sum(name.startswith("header") for name in iou)
        out: dict[str, Any] = {"teacher_miou": [mean_iou(iou[f"teacher{k}"]) for k in range(k_t)],
                               "ensemble_miou": mean_iou(iou["ensemble"]), "student_miou": mean_iou(iou["student"]),
                               "header_miou": [mean_iou(iou[f"header{k}"]) for k in range(k_s)],
                               "student_iou": _rounded(iou["student"]), "ensemble_iou": _rounded(iou["ensemble"]),
                               "teacher_iou": [_rounded(iou[f"teacher{k}"]) for k in range(k_t)]}
        if aggregator is not None:
            out["student_miou_attention"] = mean_iou(iou["attention"])
        return out

    def score(self, model: nn.Module, ds: Dataset, num_classes: int, device: torch.device) -> float:
        return float(evaluate_segmenter(model, ds, num_classes, device)["miou"])

    def agreement(self, s: torch.Tensor, t: torch.Tensor) -> dict[str, float]:
        """Per-pixel top-1 agreement and mean per-pixel total-variation distance, (N, C, H, W) logits."""
        return {"probe_agreement": (s.argmax(1) == t.argmax(1)).float().mean().item(),
                "probe_tv": 0.5 * (F.softmax(s, 1) - F.softmax(t, 1)).abs().sum(1).mean().item()}

    def sample_grid(self, x: torch.Tensor, teacher_logits: torch.Tensor | None) -> torch.Tensor:
        """Each generated image (min-max scaled per image) followed by the teachers' ensemble label map in the
        CamVid palette (class ids beyond the palette wrap around it)."""
        from ..camvid import PALETTE, colorize
        flat = x.float().flatten(1)
        lo, hi = flat.min(1)[0].view(-1, 1, 1, 1), flat.max(1)[0].view(-1, 1, 1, 1)
        images = ((x.float() - lo) / (hi - lo).clamp_min(1e-5))
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if teacher_logits is None:
            return images
        labels = colorize(teacher_logits.mean(0).argmax(1) % (len(PALETTE) - 1))
        return torch.stack([images[:, :3], labels], 1).flatten(0, 1)

    def output(self, num_classes: int) -> str:
        return f"logits (batch, {num_classes}, height, width)"


def _rounded(iou: torch.Tensor) -> list[float | None]:
    return [None if v != v else round(float(v), 4) for v in iou]
