"""The teachers as the engine sees them: one interface, answered in-process or by Ray actors.

The engine asks the pool three things (spec 7), the first two as answers to collect later (`Pending`), so a
remote pool computes while the engine goes on:
- `targets(x)`: the no-grad targets of one student batch; `targets_of(xs)` those of several batches at once
  (in-process: one forward over all of them; Ray actors: one call per batch, so each starts at once);
- `generator_side(x, y[, spec])`: the teachers' half of a generator step (spec 7.2), a `TeacherStep` in two
  parts: the forward on x starts at the call (`logits()` collects t, (K, B, C)); `backward(s)`, given the
  student's paired logits, computes the summed teacher-side input gradient sum_k g_k. `spec` overrides the
  configured objective for this step only (the probe-set build trains its own generator on the same teachers);
- `logits(x)`: plain no-grad logits (K, B, C), or (K, B, C, H, W) for dense teachers, for evaluation.

`TeacherGroup` answers them for the teachers of one process. It *is* the in-process pool, and each Ray
teacher actor (`cdkd.distributed.teacher_actors`) hosts one, so the two pools cannot differ in what they compute.
"""
from __future__ import annotations

import functools
import hashlib
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Protocol, TypeVar

import torch
import torch.nn as nn

from .config import LossConfig
from .losses import attention_map
from .objectives import Targets, teacher_loss
from .teachers import InputNorm, Teacher, validate_teachers


@dataclass
class PoolSpec:
    """What the engine needs from the teachers; fixed once the student is known (`Distiller` sets it)."""
    loss: LossConfig = field(default_factory=LossConfig)
    num_teachers: int = 1            # K of the whole pool: the 1/K of each teacher's share
    use_feat: bool = False           # send pooled features with the targets
    at_stages: int = 0               # send attention maps of the first `at_stages` stages
    amp: str = "none"                # autocast dtype for teacher forwards: bf16 | fp16 | none
    global_batch: bool = False       # BN prior on the moments of all DDP ranks' batch (in-process pool under DDP)
    channels_last: bool = False      # teachers (and their inputs) in channels_last memory format
    compile: bool = False            # torch.compile (inductor, weights frozen) the teachers' no-grad forward


T = TypeVar("T")


class Pending(Generic[T]):
    """An answer that may still be computing (in an actor); `result()` waits for it, once."""

    def __init__(self, wait: Callable[[], T]) -> None:
        self._wait, self._done, self._value = wait, False, None

    def result(self) -> T:
        if not self._done:
            self._value, self._done = self._wait(), True
        return self._value


class TeacherStep(Protocol):
    """The teachers' half of one generator step: forward on x (begun), then backward given the student logits."""

    def logits(self) -> torch.Tensor: ...
    def backward(self, s: torch.Tensor) -> Pending[tuple[torch.Tensor, dict[str, float]]]: ...


class TeacherPool(Protocol):
    num_teachers: int
    num_classes: int
    input_shape: tuple[int, ...]
    names: list[str]
    params: int
    fingerprint: str
    input_space: InputNorm | None     # the generator's input normalisation (None: the teachers' own, unknown)
    norms: list[InputNorm | None]     # each teacher's own normalisation, where known
    task: str                         # classification | segmentation (`cdkd.tasks`), from the teachers' logits

    def configure(self, spec: PoolSpec) -> None: ...
    def describe(self, x: torch.Tensor) -> list[dict[str, Any]]: ...
    def targets(self, x: torch.Tensor) -> Pending[Targets]: ...
    def targets_of(self, xs: list[torch.Tensor]) -> list[Pending[Targets]]: ...
    def generator_side(self, x: torch.Tensor, y: torch.Tensor | None, spec: PoolSpec | None = None
                       ) -> TeacherStep: ...
    def logits(self, x: torch.Tensor) -> torch.Tensor: ...


def autocast(device_type: str, amp: str) -> torch.autocast | nullcontext:
    """The autocast context of config value `amp` (bf16 | fp16 | none); fp16 only on CUDA."""
    if amp == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    if amp == "fp16" and device_type == "cuda":
        return torch.autocast(device_type, dtype=torch.float16)
    return nullcontext()


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 convolutions beat fp32 here, as the device reports it: a CUDA device with native bf16
    (`torch.cuda.is_bf16_supported` without emulation: compute capability 8.0+, or ROCm); a CPU with AMX tiles
    (oneDNN's bf16 kernels); or an AMD CPU with avx512_bf16 (Zen 4 and later).

    avx512_bf16 alone is not enough: on an Intel Xeon without AMX its bf16 convolutions measured 1.5x slower than
    fp32 (README "CIFAR"), on an AMD EPYC (Zen 4) 2.0x faster (479.7 vs 244.4 GFLOP/s, bench/README.md). The rule
    reads what the CPU reports, never a timing, so every worker of a run decides alike. Emulated bf16 on an older
    GPU is slower than fp32.
    """
    if device.type == "cuda":
        try:  # (no driver, a bad index: not fast)
            with torch.cuda.device(device) if device.index is not None else nullcontext():
                return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except Exception:  # noqa: BLE001 - a capability probe: any failure means "no fast bf16 here"
            return False
    is_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if is_amx and is_amx():
        return True
    has_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(has_bf16 and has_bf16()) and cpu_vendor() == "AuthenticAMD"


@functools.cache
def cpuinfo(key: str) -> str:
    """The first `key` field of /proc/cpuinfo (e.g. 'vendor_id', 'model name'), '' where Linux has none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == key:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    """The CPU's vendor string as Linux reports it (`vendor_id`), '' where unknown."""
    return cpuinfo("vendor_id")


def fingerprint(names: list[str], state_hashes: list[str]) -> str:
    """Which teachers, in which order, with which weights: files built from the teachers (the probe set) carry it."""
    return hashlib.sha1("|".join(f"{n}:{h}" for n, h in zip(names, state_hashes)).encode()).hexdigest()[:16]


def merge_targets(parts: list[Targets]) -> Targets:
    """Concatenate the targets of disjoint teacher groups along the teacher axis (in group order)."""
    if len(parts) == 1:
        return parts[0]
    pooled = [f for p in parts for f in p.pooled] if parts[0].pooled is not None else None
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
        self.input_space: InputNorm | None = None
        self.norms = [t.norm for t in teachers]
        self.task = getattr(teachers[0], "task", "classification") if teachers else "classification"
        self.memory_format = torch.contiguous_format
        self._compiled: list[Callable] | None = None  # the compiled no-grad forwards (`spec.compile`), once built

    @classmethod
    def validated(cls, teachers: list[Teacher], input_shape: tuple[int, ...] | None = None,
                  space: InputNorm | None = None) -> "TeacherGroup":
        """A group whose teachers agree on input shape and classes (else TeacherError naming the odd one),
        each mapping inputs from the generator's space `space` (None: chosen from these teachers)."""
        group = cls(teachers)
        group.num_classes, group.input_shape = validate_teachers(teachers, input_shape, space)
        group.task = teachers[0].task
        group.input_space = space or next((t.norm for t in teachers if t.norm is not None), None)
        return group

    def configure(self, spec: PoolSpec) -> None:
        self.spec = spec
        fmt = torch.channels_last if spec.channels_last else torch.contiguous_format
        if fmt != self.memory_format:  # (a layout only: the same weights, the same answers)
            self.memory_format = fmt
            for t in self.teachers:
                t.to(memory_format=fmt)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """x on the teachers' device, in their memory format (4-D image batches)."""
        x = x.to(self.device)
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x

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

    def _no_grad_forwards(self) -> list[Callable]:
        """The teachers' no-grad forwards: compiled by inductor with their weights frozen as constants (BN folded
        into the convolutions, oneDNN weights pre-packed) where `spec.compile` asks, else eager."""
        if not self.spec.compile:
            return list(self.teachers)
        if self._compiled is None:
            self._compiled = [torch.compile(t, dynamic=False, options={"freezing": True}) for t in self.teachers]
        return self._compiled

    @torch.no_grad()
    def _targets(self, x: torch.Tensor) -> Targets:
        x = self._input(x)
        with self._amp():
            try:
                outs = [f(x) for f in self._no_grad_forwards()]
            except Exception as e:  # noqa: BLE001 - no compiler, an op inductor cannot lower: run them eagerly
                if not self.spec.compile:
                    raise
                why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
                print(f"[cdkd] torch.compile of the teachers failed ({why}); running them eagerly", flush=True)
                self.spec.compile, self._compiled = False, None
                outs = [t(x) for t in self.teachers]
        logits = torch.stack([o.logits.float() for o in outs])
        pooled = [o.pooled.float() if o.pooled is not None else None for o in outs] if self.spec.use_feat else None
        maps = None
        if self.spec.at_stages:
            maps = [torch.stack([attention_map(o.stages[j].float()) for o in outs]) for j in range(self.spec.at_stages)]
        return Targets(logits, pooled, maps)

    def targets(self, x: torch.Tensor) -> Pending[Targets]:
        """The targets of batch x, computed when the caller collects them."""
        return Pending(lambda: self._targets(x))

    def targets_of(self, xs: list[torch.Tensor]) -> list[Pending[Targets]]:
        """The targets of several batches from one forward over all of them, computed when the first is
        collected: eval-mode teachers answer each sample alone, so this is `targets` per batch in one larger call
        (`train.batched_targets`; on 2 CPU cores slower than per batch: 320 images overflow the caches)."""
        if len(xs) == 1:
            return [self.targets(xs[0])]
        whole = Pending(lambda: self._targets(torch.cat(xs)).split([len(x) for x in xs]))
        return [Pending(lambda i=i: whole.result()[i]) for i in range(len(xs))]

    def generator_side(self, x: torch.Tensor, y: torch.Tensor | None, spec: PoolSpec | None = None
                       ) -> "GroupStep":
        """This group's half of a generator step on x; `spec`: this step's objective, if not the configured one."""
        return GroupStep(self, x, y, spec or self.spec)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return torch.stack([t(x).logits.float() for t in self.teachers])


class GroupStep:
    """A `TeacherStep` of one `TeacherGroup`: the forward runs at construction and keeps its graph to x until
    `backward(s)` (s: the student logits paired with these teachers, (K_group, B, C)) takes d/dx of
    sum_k [-w_adv D(s_k, t_k) + b_k(x)] / K. Returns that gradient and the summed adv/prior for logging."""

    def __init__(self, group: TeacherGroup, x: torch.Tensor, y: torch.Tensor | None, spec: PoolSpec) -> None:
        dev = group.device
        self.spec, self.y = spec, (y.to(dev) if y is not None else None)
        self.x = group._input(x.detach()).requires_grad_(True)
        with autocast(dev.type, spec.amp):
            self.outs = [t(self.x, bn_stats=spec.loss.w_bn > 0, global_batch=spec.global_batch)
                         for t in group.teachers]
        self.t = torch.stack([o.logits.detach().float() for o in self.outs])

    def logits(self) -> torch.Tensor:
        return self.t

    def backward(self, s: torch.Tensor) -> Pending[tuple[torch.Tensor, dict[str, float]]]:
        s = s.detach().to(self.x.device)
        loss, adv, prior = torch.zeros((), device=self.x.device), 0.0, 0.0
        for k, out in enumerate(self.outs):
            l_k, logs = teacher_loss(out, s[k], self.y, self.spec.loss, self.spec.num_teachers)
            loss, adv, prior = loss + l_k, adv + logs["adv"], prior + logs["prior"]
        grad = torch.autograd.grad(loss, self.x)[0] if loss.requires_grad else torch.zeros_like(self.x)
        self.outs = None  # the teacher graph is done with
        return Pending(lambda: (grad, {"adv": adv, "prior": prior}))
