"""The frozen teacher as the engine sees it, whatever file or library it came from.

A teacher kind (`cdkd.teachers.<kind>`) turns a `TeacherSpec` into a `Loaded`: a module with cdkd's teacher
interface `outputs(x) -> (stages, pooled | None, logits)`, plus what the file or library says about its input
(shape, normalisation). `Teacher` wraps it: eval mode, no parameter gradients, the BN-prior hooks, and the
affine map from the generator's input space to this teacher's own normalisation.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import TeacherError, first_line
from ..losses import attention_map, bn_stat_term
from ..registry import Registry

# kind name -> loader(spec) -> Loaded; each module of this package registers one
KINDS = Registry("teacher kind")


@dataclass(frozen=True)
class InputNorm:
    """A per-channel input normalisation x = (pixel - mean) / std, pixels in [0, 1]."""
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


@dataclass
class Loaded:
    """What a kind's loader returns."""
    model: nn.Module                            # has `outputs(x)`; its inner `.model` is hashed when present
    input_shape: tuple[int, ...] | None = None  # what the file or library declares
    strict_shape: bool = True                   # False: a library default (timm's pretrained_cfg), overridable
    norm: InputNorm | None = None               # the teacher's own input normalisation, if known
    meta: dict[str, Any] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()               # losses this teacher cannot serve (logits-only kinds)


@dataclass
class TeacherOutput:
    logits: torch.Tensor                      # (B, C), or (B, C, H, W) for a dense (segmentation) teacher
    pooled: torch.Tensor | None = None        # (B, D) penultimate feature, None if the teacher cannot give it
    stages: list[torch.Tensor] = field(default_factory=list)  # per-stage feature maps (B, C_j, H_j, W_j)
    bn_terms: list[torch.Tensor] = field(default_factory=list)  # r_l per BN layer, in module order


class DenseOutputs(nn.Module):
    """A cdkd dense model (`outputs(x) -> (stages, None, logits (B, C, H, W))`), as it is."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor]:
        return self.model.outputs(x)


class OutDictOutputs(nn.Module):
    """torchvision's segmentation models: `model(x)['out']` (B, C, H, W); logits only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor]:
        return [], None, self.model(x)["out"]


class ClassifierOutputs(nn.Module):
    """cdkd's classifier interface (`forward_features -> (stages, pooled)`, `forward_head`) as teacher outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor]:
        stages, pooled = self.model.forward_features(x)
        return list(stages), pooled, self.model.forward_head(pooled)


class LastLinearOutputs(nn.Module):
    """Any classifier `nn.Module`: logits from its forward, the pooled feature as the input of its last
    `nn.Linear` (the classifier of torchvision models and of most user classes).

    A forward pre-hook reads the feature from the same single forward that gives the logits, so this works for
    models fx cannot trace (dynamic control flow in a user's class) and costs nothing. A model with no Linear
    layer gives logits only.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        self._pooled: list[torch.Tensor] = []
        self.has_pooled = bool(linears)
        if linears:
            linears[-1].register_forward_pre_hook(lambda m, inp: self._pooled.append(inp[0]))

    def outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor]:
        self._pooled.clear()
        try:
            logits = self.model(x)
            pooled = self._pooled[-1].flatten(1) if self._pooled else None
        finally:
            self._pooled.clear()
        return [], pooled, logits


class LogitsOutputs(nn.Module):
    """A model that is a black box here (exported programs, TorchScript): logits only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.has_pooled = False

    def train(self, mode: bool = True) -> "LogitsOutputs":
        self.training = mode  # an exported program has no train/eval switch: it runs as it was exported (eval)
        return self

    def outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor]:
        return [], None, self.model(x)


def _inner(model: nn.Module) -> nn.Module:
    return getattr(model, "model", model)


class Teacher(nn.Module):
    """A frozen teacher: logits, pooled features, stage maps and, on request, the BN-prior terms of a batch.

    Inputs arrive in the generator's space; `set_input_space` makes the teacher map them to its own
    normalisation first (identity when the two agree, or when either is unknown).
    """

    def __init__(self, loaded: Loaded, name: str, source: str) -> None:
        super().__init__()
        self.model = loaded.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.name, self.source = name, source
        self.input_shape = loaded.input_shape
        self.strict_shape = loaded.strict_shape
        self.norm = loaded.norm
        self.dropped = loaded.dropped
        self.meta = loaded.meta
        self.task = "classification"  # set from its logits by `validate_teachers` (cdkd.tasks)
        self._bn_terms: list[torch.Tensor] | None = None
        self._global_batch = False
        bns = [m for m in self.model.modules() if isinstance(m, _BatchNorm)]
        for m in bns:
            m.register_forward_pre_hook(self._bn_hook)
        self.num_bn = len(bns)
        self.register_buffer("in_scale", None, persistent=False)
        self.register_buffer("in_shift", None, persistent=False)
        self.state_hash = state_hash(_inner(self.model))

    def set_input_space(self, space: InputNorm | None) -> None:
        """Inputs x come normalised by `space`; feed this teacher (pixel - mean_k) / std_k instead."""
        if space is None or self.norm is None or self.norm == space:
            self.in_scale = self.in_shift = None
            return
        s0, m0 = torch.tensor(space.std), torch.tensor(space.mean)
        sk, mk = torch.tensor(self.norm.std), torch.tensor(self.norm.mean)
        dev = next(iter(self.model.state_dict().values()), torch.zeros(())).device
        self.in_scale = (s0 / sk).view(1, -1, 1, 1).to(dev)
        self.in_shift = ((m0 - mk) / sk).view(1, -1, 1, 1).to(dev)

    def _bn_hook(self, module: _BatchNorm, inputs: tuple[torch.Tensor, ...]) -> None:
        if self._bn_terms is not None:
            self._bn_terms.append(bn_stat_term(inputs[0], module.running_mean, module.running_var,
                                               self._global_batch))

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # frozen: BN always uses running statistics

    def forward(self, x: torch.Tensor, bn_stats: bool = False, global_batch: bool = False) -> TeacherOutput:
        """Logits, pooled features, stage maps; with `bn_stats` the BN-prior terms r_l of this batch (over the
        batch of all DDP ranks with `global_batch`)."""
        if self.in_scale is not None:
            x = x * self.in_scale.to(x.dtype) + self.in_shift.to(x.dtype)
        self._bn_terms = [] if bn_stats else None
        self._global_batch = global_batch
        try:
            stages, pooled, logits = self.model.outputs(x)
            return TeacherOutput(logits, pooled, stages, self._bn_terms or [])
        finally:
            self._bn_terms = None

    @torch.no_grad()
    def attention_maps(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        return [attention_map(a) for a in stages]


def state_hash(model: nn.Module) -> str:
    """sha1 of a model's parameters and buffers (names, shapes and bytes): which weights a file was built for."""
    h = hashlib.sha1()
    for name, v in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def teacher_name(spec: Any) -> str:
    """How messages and tables name a teacher: its `name`, else its file name."""
    return spec.name or os.path.basename(spec.path)


def check_file(path: str, what: str = "teacher checkpoint") -> None:
    if os.path.isdir(path):
        raise TeacherError(f"{what} {path} is a directory; give the file itself")
    if not os.path.isfile(path):
        raise TeacherError(f"{what} not found: {path}")


def torch_load(path: str, run_code: bool = False) -> Any:
    """A user's file as data (`weights_only=True`); `run_code` (the spec's `run_pickled_code`) unpickles
    whole objects, which runs code from the file."""
    check_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not run_code)
    except Exception as e:  # empty or corrupt file, truncated write, pickle of foreign objects
        hint = "; a whole pickled model needs run_pickled_code: true (it runs the file's code)" \
            if not run_code and "weights_only" in str(e) else ""
        raise TeacherError(f"{path}: cannot read checkpoint ({first_line(e)}){hint}") from None


STATE_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "net")  # EMA first, as timm does


def state_dict_of(obj: Any, path: str) -> dict[str, torch.Tensor]:
    """The weights in a checkpoint: a state dict, or one under a usual key, without DataParallel's `module.`."""
    if isinstance(obj, dict):
        for key in STATE_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TeacherError(f"{path}: no state dict in this checkpoint (expected tensors, or one of the keys "
                           f"{', '.join(STATE_KEYS)})")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_weights(model: nn.Module, obj: Any, path: str, what: str) -> nn.Module:
    """Load a checkpoint (state dict, or a whole pickled module when allowed) into `model`; one line on mismatch."""
    if isinstance(obj, nn.Module):
        return obj
    state = state_dict_of(obj, path)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes differ: torch lists them on the lines after its header line
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), first_line(e))
        raise TeacherError(f"{path}: weights do not match {what}: {detail[:200]}") from None
    if result.missing_keys or result.unexpected_keys:
        parts = [f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[0]!r})" if result.missing_keys else "",
                 f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[0]!r})"
                 if result.unexpected_keys else ""]
        raise TeacherError(f"{path}: weights do not match {what}: {', '.join(p for p in parts if p)} keys")
    return model


def guarded(name: str, what: str, build: Callable[[], Any]) -> Any:
    """Run a library's constructor; any exception becomes one line naming the teacher and the library's message."""
    try:
        return build()
    except TeacherError:
        raise
    except Exception as e:  # noqa: BLE001 - a library may raise anything on bad kwargs or files
        raise TeacherError(f"teacher {name!r}: cannot build {what} ({first_line(e)})") from None


def norm_from(spec: Any, default: InputNorm | None, channels: int | None) -> InputNorm | None:
    """The spec's mean/std, else the library's default where it fits the channel count."""
    if spec.mean or spec.std:
        if len(spec.mean) != len(spec.std):
            raise TeacherError(f"teacher {teacher_name(spec)!r}: mean and std need the same length")
        return InputNorm(tuple(map(float, spec.mean)), tuple(map(float, spec.std)))
    if default is not None and channels is not None and len(default.mean) != channels:
        return None
    return default
