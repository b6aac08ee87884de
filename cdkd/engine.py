"""The distillation engine: one iteration = `student_steps` student steps, then one generator step.

Plain PyTorch, single process, no I/O: the run loop (`cdkd.trainer`) and later Ray only place and drive it.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .config import Config
from .errors import ConfigError, NonFiniteLossError
from .losses import attention_map
from .models.students import as_student
from .objectives import Targets, student_objective, student_side, teacher_side
from .teachers import Teacher


def build_scheduler(opt: torch.optim.Optimizer, cfg: Config) -> torch.optim.lr_scheduler.LRScheduler:
    n = cfg.train.iterations
    if cfg.optim.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.5 * (1 + math.cos(math.pi * min(it, n) / n)))
    if cfg.optim.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, [int(f * n) for f in cfg.optim.milestones], 0.1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)


class Distiller(nn.Module):
    """Student, generator (and its EMA copy), frozen teachers, optimisers and schedulers of one run."""

    def __init__(self, cfg: Config, teachers: list[Teacher], student: nn.Module, generator: nn.Module,
                 num_classes: int) -> None:
        super().__init__()
        self.cfg, self.lc = cfg, cfg.loss
        self.teachers = nn.ModuleList(teachers)
        self.student = as_student(student)
        self.generator = generator
        self.num_classes = num_classes
        k, h = len(teachers), self.student.num_headers
        if h not in (1, k):
            raise ConfigError(f"student {cfg.model.student!r} has {h} headers but there are {k} teachers "
                              f"(set model.student_kwargs.num_headers={k})")
        self.conditional = getattr(generator, "num_classes", 0) > 0
        if (self.lc.w_ce > 0 or self.lc.w_ce_gen > 0) and not self.conditional:
            raise ConfigError("loss.w_ce / loss.w_ce_gen need preset labels: use a conditional generator "
                              "(model.generator=cond_generator32)")
        self.ema = None
        if cfg.train.ema:
            self.ema = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_momentum))
        self.use_feat, self.at_stages = self._probe_pairs()
        o = cfg.optim
        if o.student == "sgd":
            self.opt_s = torch.optim.SGD(self.student.parameters(), o.student_lr, momentum=o.momentum,
                                         weight_decay=o.weight_decay)
        else:
            self.opt_s = torch.optim.Adam(self.student.parameters(), o.student_lr, weight_decay=o.weight_decay)
        self.opt_g = torch.optim.Adam(generator.parameters(), o.generator_lr)
        self.sched_s, self.sched_g = build_scheduler(self.opt_s, cfg), build_scheduler(self.opt_g, cfg)
        self.step = 0

    @torch.no_grad()
    def _probe_pairs(self) -> tuple[bool, int]:
        """Decide before training which teacher/student pairings the losses can use (feature dims, map sizes)."""
        x, y = self.sample(self.generator, 2)
        outs = [t(x) for t in self.teachers]
        stages_s, feats_s = self.student.forward_features(x)
        dims = {o.pooled.shape[-1] if o.pooled is not None else None for o in outs}
        use_feat = self.lc.w_feat > 0 and dims == {feats_s.shape[-1]}
        if self.lc.w_feat > 0 and not use_feat:
            print(f"[cdkd] loss.w_feat ignored: teacher feature dims {sorted(map(str, dims))} != student's "
                  f"{feats_s.shape[-1]} (as in CDFKD-MFS)")
        at_stages = 0
        if self.lc.w_at > 0:
            for j, a_s in enumerate(stages_s):
                if any(len(o.stages) <= j or o.stages[j].shape[-2:] != a_s.shape[-2:] for o in outs):
                    break
                at_stages = j + 1
            if at_stages == 0:
                raise ConfigError("loss.w_at > 0 but no teacher stage map matches the student's first stage size")
        return use_feat, at_stages

    def amp(self, part: str = "all") -> torch.autocast | nullcontext:
        """Autocast for `part` ('generator' or 'all' = student and teachers) if the config's amp_scope covers it."""
        dev = next(self.student.parameters()).device.type
        if part != "generator" and self.cfg.train.amp_scope == "generator":
            return nullcontext()
        if self.cfg.train.amp == "bf16":
            return torch.autocast(dev, dtype=torch.bfloat16)
        if self.cfg.train.amp == "fp16" and dev == "cuda":
            return torch.autocast(dev, dtype=torch.float16)
        return nullcontext()

    def sample(self, generator: nn.Module, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x = G(z[, y]) with z ~ N(0, I) and, for a conditional G, class-balanced preset labels y."""
        dev = next(generator.parameters()).device
        z = torch.randn(n, self.cfg.model.nz, device=dev)
        y = None
        if self.conditional:
            y = (torch.arange(n, device=dev) % self.num_classes)[torch.randperm(n, device=dev)]
        with self.amp("generator"):
            x = generator(z, y)
        fmt = torch.channels_last if self.cfg.train.channels_last and self.cfg.train.amp_scope == "all" \
            else torch.contiguous_format
        return x.float().contiguous(memory_format=fmt), y

    @torch.no_grad()
    def teacher_targets(self, x: torch.Tensor) -> Targets:
        with self.amp():
            outs = [t(x) for t in self.teachers]
        logits = torch.stack([o.logits.float() for o in outs])
        pooled = torch.stack([o.pooled.float() for o in outs]) if self.use_feat else None
        maps = None
        if self.at_stages:
            maps = [torch.stack([attention_map(o.stages[j].float()) for o in outs]) for j in range(self.at_stages)]
        return Targets(logits, pooled, maps)

    def student_step(self) -> dict[str, float]:
        b = self.cfg.train.batch_size
        with torch.no_grad():
            x, y = self.sample(self.generator, b)
            if self.ema is not None:  # MAD: the student also learns from the slow-moving EMA generator
                x2, y2 = self.sample(self.ema.module, b)
                x, y = torch.cat([x, x2]), (torch.cat([y, y2]) if y is not None else None)
            tgt = self.teacher_targets(x)
        with self.amp():
            stages, feats = self.student.forward_features(x)
            s = self.student.forward_head(feats)
        loss, logs = student_objective(s.float(), feats.float(), stages[:self.at_stages], tgt, y, self.lc)
        self._check_finite(loss, "student")
        self.opt_s.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_s.step()
        return logs

    def generator_step(self) -> dict[str, float]:
        """One generator step, written as the teacher-side / student-side gradient split of spec 7.2."""
        x, y = self.sample(self.generator, self.cfg.train.batch_size)     # keeps the graph to G
        with self.amp():
            s = self.student(x).float()                                   # (H, B, C), student in train mode
        s_pair = s.expand(len(self.teachers), *s.shape[1:]) if s.shape[0] == 1 else s
        # 1. teacher side: one call per teacher returns its input gradient g_k and logits t_k
        grad_t, ts, adv, prior = torch.zeros_like(x), [], 0.0, 0.0
        for k, teacher in enumerate(self.teachers):
            g_k, t_k, logs_k = teacher_side(teacher, x, s_pair[k], y, self.lc, len(self.teachers), self.amp())
            grad_t += g_k
            ts.append(t_k)
            adv, prior = adv + logs_k["adv"], prior + logs_k["prior"]
        t = torch.stack(ts)
        # 2. student side: d/dx of -w_adv D(s, t) through the student only (t fixed)
        loss_s = student_side(s, t, self.lc)
        grad_s = torch.autograd.grad(loss_s, x)[0] if loss_s.requires_grad else torch.zeros_like(x)
        total = loss_s.item() + prior / len(ts)
        self._check_finite(torch.tensor(total), "generator")
        # 3. back-propagate the summed input gradient into G and step it
        self.opt_g.zero_grad(set_to_none=True)
        x.backward(grad_s + grad_t)
        if self.cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.generator.parameters(), self.cfg.optim.grad_clip)
        self.opt_g.step()
        if self.ema is not None:
            self.ema.update_parameters(self.generator)
        return {"loss_g": total, "g_adv": adv / len(ts), "g_prior": prior / len(ts)}

    def train_iteration(self) -> dict[str, float]:
        """student_steps student steps on fresh samples, then one generator step; schedulers step per iteration."""
        self.student.train()
        self.generator.train()
        logs: dict[str, float] = {}
        for _ in range(self.cfg.train.student_steps):
            for key, v in self.student_step().items():
                logs[key] = logs.get(key, 0.0) + v / self.cfg.train.student_steps
        logs.update(self.generator_step())
        self.sched_s.step()
        self.sched_g.step()
        self.step += 1
        logs["lr_s"] = self.sched_s.get_last_lr()[0]
        return logs

    def _check_finite(self, loss: torch.Tensor, which: str) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"{which} loss is {loss.item()} at iteration {self.step}; stopping "
                                     "(the last checkpoint is intact)")

    def state(self) -> dict:
        """Everything needed to continue the run bit-for-bit (the caller adds config and RNG)."""
        return {"student": self.student.state_dict(), "generator": self.generator.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "opt_s": self.opt_s.state_dict(), "opt_g": self.opt_g.state_dict(),
                "sched_s": self.sched_s.state_dict(), "sched_g": self.sched_g.state_dict(), "step": self.step}

    def load_state(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.generator.load_state_dict(state["generator"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        for name in ("opt_s", "opt_g", "sched_s", "sched_g"):
            getattr(self, name).load_state_dict(state[name])
        self.step = state["step"]
