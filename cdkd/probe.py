"""The data-free selection metric: how well a student agrees with the teacher ensemble on a fixed probe set.

There is no labeled validation set in data-free distillation, and a run's own generator is a biased judge (it
seeks the inputs this student gets wrong, and collapses differently per configuration). The probe set comes
from the teachers alone: a conditional *probe generator*, trained on the teachers' BN statistics and on preset
labels (no student, no adversary), with inputs drawn from several snapshots along its training so that they
range from ambiguous to prototypical. The same seed gives the same probe set, so every trial of a sweep is
judged on the same inputs, none of which it trained on. The teacher-ensemble logits are stored with the inputs.

Metrics: `probe_agreement` = top-1 agreement of the student (mean of headers) with the teacher ensemble, and
`probe_tv` = mean total-variation distance between their softmax outputs (lower is better); per pixel for dense
teachers, whose probe generator is unconditional (image-level labels mean nothing per pixel).
"""
from __future__ import annotations

import os
from typing import Any

import torch

from .checkpoint import atomic_save
from .config import Config, LossConfig, ProbeConfig
from .errors import CdkdError
from .models import create_model
from .models.generators import pick_generator
from .supervised import eval_mode
from .teacher_pool import PoolSpec, TeacherPool, autocast

PROBE_FORMAT = 1


def probe_path(cfg: Config) -> str:
    return cfg.probe.path or os.path.join(cfg.run_dir, "probe.pt")


def _snapshot_steps(pc: ProbeConfig) -> list[int]:
    return sorted({max(1, round(pc.steps * (j + 1) / pc.snapshots)) for j in range(pc.snapshots)})


def build_probe(pool: TeacherPool, num_classes: int, input_shape: tuple[int, ...], cfg: Config,
                device: torch.device | str = "cpu") -> dict[str, Any]:
    """Train a probe generator on the teachers only and draw `probe.samples` inputs from its snapshots.

    Leaves the global RNG untouched (the run's own initialisation and resume must not depend on the probe).
    """
    pc = cfg.probe
    steps = _snapshot_steps(pc)
    per_snapshot = [pc.samples // len(steps) + (j < pc.samples % len(steps)) for j in range(len(steps))]
    # dense teachers: image-level preset labels mean nothing per pixel, so their probe generator is unconditional
    # and follows the BN prior alone
    dense = getattr(pool, "task", "classification") != "classification"
    spec = PoolSpec(LossConfig(w_adv=0.0, w_bn=pc.w_bn, bn_first=cfg.loss.bn_first, w_ce_gen=0.0 if dense else 1.0),
                    num_teachers=pool.num_teachers)
    base = pick_generator(cfg.model.generator, input_shape, conditional=False)
    name = base if dense else "cond_generator_large" if "large" in base else "cond_generator32"  # the run's size
    xs, ys = [], []
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
        torch.manual_seed(pc.seed)
        gen = create_model(name, nz=cfg.model.nz, ngf=cfg.model.ngf, img_size=tuple(input_shape[-2:]), nc=input_shape[0],
                           **({} if dense else {"num_classes": num_classes})).to(device)
        if cfg.train.channels_last:  # the run's generator settings: bf16 + channels_last is ~5x faster on CPU
            gen = gen.to(memory_format=torch.channels_last)
        amp = lambda: autocast(device.type, cfg.train.amp)  # noqa: E731
        opt = torch.optim.Adam(gen.parameters(), 1e-3)
        labels = lambda n: (torch.arange(n, device=device) % num_classes)[torch.randperm(n, device=device)]  # noqa: E731
        for step in range(1, steps[-1] + 1):
            y = None if dense else labels(pc.batch_size)
            with amp():
                x = gen(torch.randn(pc.batch_size, cfg.model.nz, device=device), y).float().contiguous()
            teachers = pool.generator_side(x.detach(), y, spec)
            zeros = torch.zeros_like(teachers.logits())  # (w_adv = 0: no student)
            grad, _ = teachers.backward(zeros).result()  # the probe's objective
            opt.zero_grad(set_to_none=True)
            x.backward(grad.to(x.device))
            opt.step()
            if step in steps:
                n = per_snapshot[steps.index(step)]
                with torch.no_grad():
                    y = None if dense else labels(n)
                    with amp():
                        xs.append(gen(torch.randn(n, cfg.model.nz, device=device), y).float().cpu())
                    ys.append(y.cpu() if y is not None else torch.full((n,), -1))
    x = torch.cat(xs)
    teacher_logits = torch.cat([pool.logits(x[i:i + 64]).float().cpu() for i in range(0, len(x), 64)], dim=1)
    return {"format": PROBE_FORMAT, "x": x, "labels": torch.cat(ys), "teacher_logits": teacher_logits,
            "input_shape": tuple(input_shape), "num_classes": num_classes, "seed": pc.seed, "steps": steps}


def load_probe(path: str, num_classes: int, input_shape: tuple[int, ...], teachers: str = "") -> dict[str, Any]:
    try:
        probe = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise CdkdError(f"probe file {path} is unreadable ({type(e).__name__}); delete it to rebuild it") from None
    if not isinstance(probe, dict) or probe.get("format") != PROBE_FORMAT:
        raise CdkdError(f"{path} is not a cdkd probe file")
    if probe["num_classes"] != num_classes or tuple(probe["input_shape"]) != tuple(input_shape):
        raise CdkdError(f"probe file {path} was built for {probe['num_classes']} classes, input "
                        f"{tuple(probe['input_shape'])}; these teachers have {num_classes}, {tuple(input_shape)}")
    if teachers and probe.get("teachers") != teachers:
        raise CdkdError(f"probe file {path} was built for other teachers (fingerprint {probe.get('teachers')}, "
                        f"these are {teachers}); delete it, or set probe.path to a new file")
    return probe


def ensure_probe(pool: TeacherPool, num_classes: int, input_shape: tuple[int, ...], cfg: Config,
                 device: torch.device | str = "cpu") -> tuple[dict[str, Any] | None, bool]:
    """Load the probe set of this run (or sweep), building and saving it first if it does not exist yet.

    Returns (probe or None, whether it was built now). The pool's configured objective is left as it is.
    """
    if cfg.probe.samples == 0:
        return None, False
    path = probe_path(cfg)
    if os.path.exists(path):
        return load_probe(path, num_classes, input_shape, pool.fingerprint), False
    print(f"[cdkd] building the probe set ({cfg.probe.samples} inputs, {cfg.probe.steps} probe-generator steps) "
          f"-> {path}")
    probe = build_probe(pool, num_classes, input_shape, cfg, device)
    probe["teachers"] = pool.fingerprint
    atomic_save(probe, path)
    return probe, True


@torch.no_grad()
def probe_metrics(student: torch.nn.Module, probe: dict[str, Any], device: torch.device | str = "cpu",
                  task: Any = None, batch_size: int = 64) -> dict[str, float]:
    """Agreement (higher is better) and total-variation distance (lower) of student vs teacher ensemble, per
    input for classification and per pixel for dense teachers (`task.agreement`)."""
    from .tasks import get_task
    task = task or get_task("classification")
    x = probe["x"]
    with eval_mode(student):
        s = torch.cat([student(x[i:i + batch_size].to(device)).float().mean(0).cpu()
                       for i in range(0, len(x), batch_size)])
    return task.agreement(s, probe["teacher_logits"].mean(0))
