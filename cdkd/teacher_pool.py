"""The teachers as the engine sees them: one interface, answered in-process or by Ray actors.

The engine asks the pool three things (spec 7):
- `targets(xs)`: no-grad targets for all student batches of one iteration, one `Targets` per batch, yielded
  in order so a remote pool can stream them while the student is still stepping;
- `generator_side(x, s, y[, spec])`: the one-round-trip generator call of spec 7.2, returning the summed
  teacher-side input gradient sum_k g_k and the teacher logits t (K, B, C); `spec` overrides the configured
  objective for this call only (the probe-set build trains its own generator on the same teachers);
- `logits(x)`: plain no-grad logits (K, B, C) for evaluation.

`TeacherGroup` answers them for the teachers of one process. It *is* the in-process pool, and each Ray
teacher actor (`cdkd.distributed.teacher_actors`) hosts one, so the two pools cannot differ in what they compute.
"""
from __future__ import annotations

import hashlib
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import torch
import torch.nn as nn

from .config import LossConfig
from .losses import attention_map
from .objectives import Targets, teacher_side
from .teachers import Teacher, validate_teachers


@dataclass
class PoolSpec:
    """What the engine needs from the teachers; fixed once the student is known (`Distiller` sets it)."""
    loss: LossConfig = field(default_factory=LossConfig)
    num_teachers: int = 1            # K of the whole pool: the 1/K of each teacher's share
    use_feat: bool = False           # send pooled features with the targets
    at_stages: int = 0               # send attention maps of the first `at_stages` stages
    amp: str = "none"                # autocast dtype for teacher forwards: bf16 | fp16 | none
    global_batch: bool = False       # BN prior on the moments of all DDP ranks' batch (in-process pool under DDP)


class TeacherPool(Protocol):
    num_teachers: int
    num_classes: int
    input_shape: tuple[int, ...]
    names: list[str]
    params: int
    fingerprint: str

    def configure(self, spec: PoolSpec) -> None: ...
    def describe(self, x: torch.Tensor) -> list[dict[str, Any]]: ...
    def targets(self, xs: list[torch.Tensor]) -> Iterator[Targets]: ...
    def generator_side(self, x: torch.Tensor, s: torch.Tensor, y: torch.Tensor | None, spec: PoolSpec | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]: ...
    def logits(self, x: torch.Tensor) -> torch.Tensor: ...


def autocast(device_type: str, amp: str) -> torch.autocast | nullcontext:
    """The autocast context of config value `amp` (bf16 | fp16 | none); fp16 only on CUDA."""
    if amp == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if amp == "fp16" and device_type == "cuda":
        return torch.autocast(device_type, dtype=torch.float16)
    return nullcontext()


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 convolutions beat fp32 here: on CUDA, and on CPUs with AMX tiles (oneDNN's bf16 kernels).

    Without AMX (avx512_bf16 alone) bf16 convolutions measured 1.5x slower than fp32 (README "CIFAR").
    """
    if device.type == "cuda":
        return True
    is_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(is_amx and is_amx())


def fingerprint(names: list[str], state_hashes: list[str]) -> str:
    """Which teachers, in which order, with which weights: files built from the teachers (the probe set) carry it."""
    return hashlib.sha1("|".join(f"{n}:{h}" for n, h in zip(names, state_hashes)).encode()).hexdigest()[:16]


def merge_targets(parts: list[Targets]) -> Targets:
    """Concatenate the targets of disjoint teacher groups along the teacher axis (in group order)."""
    if len(parts) == 1:
        return parts[0]
    pooled = torch.cat([p.pooled for p in parts]) if parts[0].pooled is not None else None
    maps = [torch.cat([p.maps[j] for p in parts]) for j in range(len(parts[0].maps))] if parts[0].maps else None
    return Targets(torch.cat([p.logits for p in parts]), pooled, maps)


class TeacherGroup(nn.Module):
    """Frozen teachers of one process; the in-process `TeacherPool`. Stateless between calls."""

    def __init__(self, teachers: list[Teacher], spec: PoolSpec | None = None) -> None:
        super().__init__()
        self.teachers = nn.ModuleList(teachers)
        self.num_teachers = len(teachers)
        self.spec = spec or PoolSpec(num_teachers=len(teachers))
        self.names = [t.name for t in teachers]
        self.params = sum(p.numel() for t in teachers for p in t.model.parameters())
        self.fingerprint = fingerprint(self.names, [t.state_hash for t in teachers])
        self.num_classes, self.input_shape = 0, tuple(teachers[0].input_shape or ()) if teachers else ()

    @classmethod
    def validated(cls, teachers: list[Teacher], input_shape: tuple[int, ...] | None = None) -> "TeacherGroup":
        """A group whose teachers agree on input shape and classes (else TeacherError naming the odd one)."""
        group = cls(teachers)
        group.num_classes, group.input_shape = validate_teachers(teachers, input_shape)
        return group

    def configure(self, spec: PoolSpec) -> None:
        self.spec = spec

    @property
    def device(self) -> torch.device:
        p = next(self.teachers[0].parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _amp(self) -> torch.autocast | nullcontext:
        return autocast(self.device.type, self.spec.amp)

    @torch.no_grad()
    def describe(self, x: torch.Tensor) -> list[dict[str, Any]]:
        """Per teacher: pooled-feature dim and stage map sizes (to pair losses before training)."""
        outs = [t(x.to(self.device)) for t in self.teachers]
        return [{"pooled_dim": o.pooled.shape[-1] if o.pooled is not None else None,
                 "stage_sizes": [tuple(a.shape[-2:]) for a in o.stages]} for o in outs]

    @torch.no_grad()
    def _targets(self, x: torch.Tensor) -> Targets:
        x = x.to(self.device)
        with self._amp():
            outs = [t(x) for t in self.teachers]
        logits = torch.stack([o.logits.float() for o in outs])
        pooled = torch.stack([o.pooled.float() for o in outs]) if self.spec.use_feat else None
        maps = None
        if self.spec.at_stages:
            maps = [torch.stack([attention_map(o.stages[j].float()) for o in outs]) for j in range(self.spec.at_stages)]
        return Targets(logits, pooled, maps)

    def targets(self, xs: list[torch.Tensor]) -> Iterator[Targets]:
        """Targets of each batch in `xs`, computed lazily as the caller consumes them."""
        for x in xs:
            yield self._targets(x)

    def generator_side(self, x: torch.Tensor, s: torch.Tensor, y: torch.Tensor | None, spec: PoolSpec | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """sum_k g_k over this group's teachers, their logits t (K_group, B, C), summed adv/prior for logging.

        `s` holds the student logits paired with these teachers, (K_group, B, C), detached. `spec`: this call's
        objective, if not the configured one.
        """
        spec = spec or self.spec
        dev = self.device
        x, s = x.detach().to(dev), s.detach().to(dev)
        y = y.to(dev) if y is not None else None
        grad, ts, adv, prior = torch.zeros_like(x), [], 0.0, 0.0
        for k, teacher in enumerate(self.teachers):
            g_k, t_k, logs = teacher_side(teacher, x, s[k], y, spec.loss, spec.num_teachers,
                                          autocast(dev.type, spec.amp), spec.global_batch)
            grad += g_k
            ts.append(t_k)
            adv, prior = adv + logs["adv"], prior + logs["prior"]
        return grad, torch.stack(ts), {"adv": adv, "prior": prior}

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return torch.stack([t(x).logits.float() for t in self.teachers])
