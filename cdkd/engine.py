"""The distillation engine: one iteration = `student_steps` student steps and one generator step, in the order
of `train.loop` (DFAD: student steps first, each on a fresh batch; ABM: the generator step first, then the student
steps on one batch of the updated generator).

Plain PyTorch, no I/O: the run loop (`cdkd.trainer`) and Ray Train only place and drive it. The teachers sit
behind a `TeacherPool` (in-process or Ray actors); under torch.distributed, `apply_ddp` wraps student and
generator in DDP from outside and each rank draws its shard of every global batch.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.profiler import record_function

from .config import Config, LossConfig
from .errors import ConfigError, NonFiniteLossError
from .global_bn import convert_global_batchnorm
from .models.students import as_student
from .objectives import Targets, student_objective, student_side
from .supervised import eval_mode
from .teacher_pool import Pending, PoolSpec, TeacherGroup, TeacherPool, TeacherStep, autocast
from .teachers import Teacher


def build_scheduler(opt: torch.optim.Optimizer, cfg: Config) -> torch.optim.lr_scheduler.LRScheduler:
    n = cfg.train.iterations
    if cfg.optim.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.5 * (1 + math.cos(math.pi * min(it, n) / n)))
    if cfg.optim.schedule == "multistep":
        # floor(f n), robust to float error: 0.29 * 100 is 28.999999999999996, and the milestone is 29
        return torch.optim.lr_scheduler.MultiStepLR(opt, [int(f * n + 1e-9) for f in cfg.optim.milestones], 0.1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)


def make_optimizers(cfg: Config, student: nn.Module, generator: nn.Module
                    ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """The student's (SGD or Adam) and the generator's (Adam) optimisers of spec 2.4."""
    o = cfg.optim
    if o.student == "sgd":
        opt_s = torch.optim.SGD(student.parameters(), o.student_lr, momentum=o.momentum, weight_decay=o.weight_decay)
    else:
        opt_s = torch.optim.Adam(student.parameters(), o.student_lr, weight_decay=o.weight_decay)
    return opt_s, torch.optim.Adam(generator.parameters(), o.generator_lr)


def models_channels_last(cfg: Config, input_shape: tuple[int, ...]) -> bool:
    """Whether student and teachers run in channels_last (the generator does whenever `train.channels_last`).

    Under bf16 autocast everywhere (amp_scope=all), and in fp32 for colour images: oneDNN's convolutions want
    the NHWC layout (fp32 on 2 cores of an AMD EPYC, paper setting: 3 x ResNet-34 targets 9.6 vs 10.2 s, a student
    step 1.31 vs 1.50 s). One-channel LeNets on MNIST are faster NCHW.
    """
    return cfg.train.channels_last and (cfg.train.amp_scope == "all" or (len(input_shape) == 3 and input_shape[0] >= 3))


@dataclass
class LossPairing:
    """Which teacher/student pairings the losses use, decided once from shapes before training."""
    use_feat: bool = False      # pooled-feature L1 (the student projects to the teachers' width if they differ)
    at_stages: int = 0          # attention transfer over the first `at_stages` stage maps


@torch.no_grad()
def pair_losses(pool: TeacherPool, student: nn.Module, input_shape: tuple[int, ...], lc: LossConfig) -> LossPairing:
    """Pair the losses with what teachers and student output (feature widths, stage-map sizes).

    When `w_feat > 0` and a teacher's width differs from the student's, each header gets a training-only
    projection to its own teacher's width here (so the optimiser built afterwards covers it); teachers
    without a pooled feature (logits-only kinds) drop out of the feature loss.
    """
    x = torch.zeros(2, *input_shape, device=next(student.parameters()).device)
    outs = pool.describe(x)
    with eval_mode(student):
        stages_s, feats_s = student.forward_features(x)
    dims = [o["pooled_dim"] for o in outs]
    use_feat = lc.w_feat > 0 and any(d is not None for d in dims)
    if use_feat and set(dims) != {feats_s.shape[-1]}:
        student.project_features_to(dims)
    at_stages = 0
    if lc.w_at > 0:
        for j, a_s in enumerate(stages_s):
            if any(len(o["stage_sizes"]) <= j or o["stage_sizes"][j] != tuple(a_s.shape[-2:]) for o in outs):
                break
            at_stages = j + 1
        if at_stages == 0:
            raise ConfigError("loss.w_at > 0 but no teacher stage map matches the student's first stage size")
    return LossPairing(use_feat, at_stages)


class Distiller(nn.Module):
    """Student, generator (and its EMA copy), the teacher pool, optimisers and schedulers of one run.

    `build` (cdkd.trainer) makes the parts: the loss pairing (which may add the student's feature projection)
    and then the optimisers over the final parameters. Parallelism is applied from outside (`apply_ddp`).
    """

    def __init__(self, cfg: Config, pool: TeacherPool, student: nn.Module, generator: nn.Module, num_classes: int,
                 optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer], pairing: LossPairing) -> None:
        super().__init__()
        self.cfg, self.lc = cfg, cfg.loss
        self.pool = pool
        self.student = as_student(student)
        self.generator = generator
        self.ddp: dict[str, nn.Module] = {}  # DDP wrappers by part, set by `apply_ddp` (a plain dict: no submodules)
        self.rank, self.world_size = 0, 1
        self.num_classes = num_classes
        k, h = self.pool.num_teachers, self.student.num_headers
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
        self.use_feat, self.at_stages = pairing.use_feat, pairing.at_stages
        self.channels_last = models_channels_last(cfg, tuple(pool.input_shape))
        self.pool_spec = PoolSpec(self.lc, k, self.use_feat, self.at_stages,
                                  cfg.train.amp if cfg.train.amp_scope == "all" else "none",
                                  channels_last=self.channels_last, compile=cfg.train.compile == "teachers")
        self.pool.configure(self.pool_spec)
        self.opt_s, self.opt_g = optimizers
        self.sched_s, self.sched_g = build_scheduler(self.opt_s, cfg), build_scheduler(self.opt_g, cfg)
        # fp16 autocast (CUDA) needs loss scaling against gradient underflow; bf16 and fp32 do not (no-op then)
        fp16 = cfg.train.amp == "fp16" and cfg.train.device != "cpu" and torch.cuda.is_available()
        self.scaler_s, self.scaler_g = (torch.amp.GradScaler("cuda", enabled=fp16) for _ in range(2))
        self.step = 0

    @property
    def student_fwd(self) -> nn.Module:
        """What the student steps call: the student, or its DDP wrapper."""
        return self.ddp.get("student", self.student)

    @property
    def generator_fwd(self) -> nn.Module:
        return self.ddp.get("generator", self.generator)

    @property
    def teachers(self) -> list[Teacher]:
        """The in-process teachers (only for an in-process pool)."""
        return list(self.pool.teachers)

    def amp(self, part: str = "all") -> torch.autocast | nullcontext:
        """Autocast for `part` ('generator' or 'all' = student and teachers) if the config's amp_scope covers it."""
        if part != "generator" and self.cfg.train.amp_scope == "generator":
            return nullcontext()
        return autocast(next(self.student.parameters()).device.type, self.cfg.train.amp)

    def latent(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z ~ N(0, I) and, for a conditional G, class-balanced preset labels y: this rank's shard.

        `n` is the global batch: every rank draws the same z (same seed) and keeps its own shard of it,
        so N workers see exactly the inputs of one worker with the same global batch.
        """
        dev = next(self.generator.parameters()).device
        z = torch.randn(n, self.cfg.model.nz, device=dev)
        y = None
        if self.conditional:
            y = (torch.arange(n, device=dev) % self.num_classes)[torch.randperm(n, device=dev)]
        if self.world_size > 1:
            shard = slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)
            z, y = z[shard], (y[shard] if y is not None else None)
        return z, y

    def sample(self, generator: nn.Module, n: int, latent: tuple[torch.Tensor, torch.Tensor | None] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x = G(z[, y]) for a fresh `latent(n)`, or for the given one (ABM regenerates its batch from the same z)."""
        z, y = latent or self.latent(n)
        with self.amp("generator"):
            x = generator(z, y)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.float().contiguous(memory_format=fmt), y

    @torch.no_grad()
    def draw(self, generator: nn.Module, latent: tuple[torch.Tensor, torch.Tensor | None] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A student-side batch (no graph to G) of the global batch size from `generator` (G or the EMA copy)."""
        with record_function("generator.sample"):
            return self.sample(generator, self.cfg.train.batch_size, latent)

    def student_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One DFAD-loop student batch from G (and, for MAD, a second half from the slow-moving EMA generator)."""
        x, y = self.draw(self.generator_fwd)
        if self.ema is not None:
            x2, y2 = self.draw(self.ema.module)
            x, y = torch.cat([x, x2]), (torch.cat([y, y2]) if y is not None else None)
        return x, y

    @record_function("student.step")
    def student_step(self, x: torch.Tensor, y: torch.Tensor | None, tgt: Targets,
                     ema: tuple[torch.Tensor, torch.Tensor | None, Targets] | None = None) -> dict[str, float]:
        """One student step on x; with `ema` (the ABM loop's EMA batch and its targets) the loss is MAD's
        D(x) + D(EMA batch), taken in one forward over both (student BN statistics over the two)."""
        tgt, parts = tgt.to(x.device), 1
        if ema is not None:
            x_e, y_e, tgt_e = ema
            x, y = torch.cat([x, x_e]), (torch.cat([y, y_e]) if y is not None else None)
            tgt, parts = Targets.cat([tgt, tgt_e.to(x.device)]), 2
        with self.amp():
            stages, feats, s = self.student_fwd(x, features=True)
        feats = [f.float() for f in feats] if isinstance(feats, list) else feats.float() if feats is not None else None
        loss, logs = student_objective(s.float(), feats, stages[:self.at_stages], tgt, y, self.lc)
        # every term is a batch mean, so the sum over `parts` equal batches is parts x the mean over all of them
        loss = loss * parts
        logs["loss_s"] = loss.item()
        self._check_finite(loss, "student")
        self.opt_s.zero_grad(set_to_none=True)
        self.scaler_s.scale(loss).backward()
        if self.cfg.optim.student_grad_clip > 0:
            self.scaler_s.unscale_(self.opt_s)
            nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.optim.student_grad_clip)
        self.scaler_s.step(self.opt_s)
        self.scaler_s.update()
        return logs

    def generator_batch(self, latent: tuple[torch.Tensor, torch.Tensor | None] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None, TeacherStep]:
        """x = G(z[, y]) for the generator step, keeping its graph to G, and the teachers' forward on x (begun)."""
        with record_function("generator.forward"):
            x, y = self.sample(self.generator_fwd, self.cfg.train.batch_size, latent)
        with record_function("teachers.generator_forward"):
            return x, y, self.pool.generator_side(x.detach(), y)

    def generator_step(self, batch: tuple[torch.Tensor, torch.Tensor | None, TeacherStep] | None = None
                       ) -> dict[str, float]:
        """One generator step, written as the teacher-side / student-side gradient split of spec 7.2.

        `batch` is a `generator_batch()` drawn before the student steps (G is unchanged since), so a remote
        pool ran the teachers' forward on it while the student stepped; here the student's forward, then
        the teachers' backward (in the pool) while the engine takes the student-side input gradient.
        """
        x, y, teachers = batch or self.generator_batch()
        with record_function("student.forward_g"), self.amp():  # plain student: only d/dx is wanted here
            s = self.student(x).float()                   # (H, B, C) or dense (H, B, C, h, w), student in train mode
        k = self.pool.num_teachers
        s_pair = s.expand(k, *s.shape[1:]) if s.shape[0] == 1 else s
        # 1. teacher side: each teacher's logits t_k, then (begun now) sum_k g_k given the student's logits
        with record_function("teachers.generator_forward"):
            t = teachers.logits().to(x.device)
        with record_function("teachers.generator_backward"):  # (a remote pool only sends s here)
            teacher_grad = teachers.backward(s_pair.detach())
        # 2. student side: d/dx of -w_adv D(s, t) through the student only (t fixed)
        scale = self.scaler_g.get_scale() if self.scaler_g.is_enabled() else 1.0
        with record_function("student.input_grad"):
            loss_s = student_side(s, t, self.lc)
            grad_s = torch.autograd.grad(loss_s * scale, x)[0] if loss_s.requires_grad else torch.zeros_like(x)
        with record_function("teachers.generator_backward"):
            grad_t, logs_t = teacher_grad.result()
        grad_t = grad_t.to(x.device)
        adv, prior = logs_t["adv"] / k, logs_t["prior"] / k
        total = loss_s.item() + prior
        self._check_finite(torch.tensor(total), "generator")
        # 3. back-propagate the summed input gradient (times the fp16 loss scale, if any) into G and step it
        with record_function("generator.backward"):
            self.opt_g.zero_grad(set_to_none=True)
            x.backward(grad_s + grad_t * scale)
            if self.cfg.optim.grad_clip > 0:
                self.scaler_g.unscale_(self.opt_g)
                nn.utils.clip_grad_norm_(self.generator.parameters(), self.cfg.optim.grad_clip)
            self.scaler_g.step(self.opt_g)
            self.scaler_g.update()
        if self.ema is not None:
            self.ema.update_parameters(self.generator)
        return {"loss_g": total, "g_adv": adv, "g_prior": prior}

    def train_iteration(self) -> dict[str, float]:
        """One iteration in the order of `train.loop` (both made of the same steps); schedulers step once."""
        self.student.train()
        self.generator.train()
        logs = self.abm_iteration() if self.cfg.train.loop == "abm" else self.dfad_iteration()
        self.sched_s.step()
        self.sched_g.step()
        self.step += 1
        logs["lr_s"] = self.sched_s.get_last_lr()[0]
        return logs

    def dfad_iteration(self) -> dict[str, float]:
        """DFAD/CDFKD-MFS order: student_steps student steps, each on a fresh batch, then one generator step.

        G is fixed until the generator step, so every input of this iteration is drawn first and goes to the
        teachers as soon as it exists: a remote pool computes the student targets and the teachers' forward
        of the generator step while the engine draws and steps the student.
        """
        drawn = [self.student_batch() for _ in range(self.cfg.train.student_steps)]
        targets = self.send_targets([x for x, _ in drawn])
        generator_batch = self.generator_batch()
        logs = self.student_phase([(x, y, t, None) for (x, y), t in zip(drawn, targets)])
        logs.update(self.generator_step(generator_batch))
        return logs

    def abm_iteration(self) -> dict[str, float]:
        """ABM/ZSKT order (spec 1.2, MAD 4.2): one generator step on G(z), then student_steps student steps on
        G(z) regenerated (same z) by the updated G, whose teacher targets are computed once: G is fixed during
        the student steps, so every step sees the same x. With an EMA generator (MAD), updated by the generator
        step, each student step also gets a fresh EMA batch with its own targets (all sent to the teachers at once).
        """
        latent = self.latent(self.cfg.train.batch_size)
        logs = self.generator_step(self.generator_batch(latent))
        x, y = self.draw(self.generator_fwd, latent)
        n = self.cfg.train.student_steps
        drawn = [self.draw(self.ema.module) for _ in range(n)] if self.ema is not None else []
        targets, *ema_targets = self.send_targets([x] + [x_e for x_e, _ in drawn])
        ema = [(x_e, y_e, t) for (x_e, y_e), t in zip(drawn, ema_targets)] or [None] * n
        logs.update(self.student_phase([(x, y, targets, e) for e in ema]))
        return logs

    def send_targets(self, xs: list[torch.Tensor]) -> list[Pending[Targets]]:
        """The teachers' targets of this iteration's student batches, asked for at once (answers collected later):
        with `train.batched_targets`, an in-process pool runs one forward over all of them."""
        if self.cfg.train.batched_targets:
            return self.pool.targets_of(xs)
        return [self.pool.targets(x) for x in xs]

    def student_phase(self, batches: list[tuple[torch.Tensor, torch.Tensor | None, Pending[Targets], tuple | None]]
                      ) -> dict[str, float]:
        """One student step per (x, y, pending targets, EMA batch or None), targets collected just before each
        step; the logs are averaged over the steps."""
        logs: dict[str, float] = {}
        for x, y, pending, ema in batches:
            with record_function("teachers.targets"):
                tgt = pending.result()
                if ema is not None:
                    ema = (ema[0], ema[1], ema[2].result())
            for key, v in self.student_step(x, y, tgt, ema).items():
                logs[key] = logs.get(key, 0.0) + v / len(batches)
        return logs

    def _check_finite(self, loss: torch.Tensor, which: str) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"{which} loss is {loss.item()} at iteration {self.step}; stopping")

    @torch.no_grad()
    def finite(self) -> bool:
        """Whether every student and generator weight and BN statistic is finite (checked before a checkpoint)."""
        models = [self.student, self.generator] + ([self.ema] if self.ema is not None else [])
        return all(bool(torch.isfinite(v).all()) for m in models for v in m.state_dict().values()
                   if v.is_floating_point())

    def state(self) -> dict:
        """Everything needed to continue the run bit-for-bit (the caller adds config and RNG)."""
        return {"student": self.student.state_dict(), "generator": self.generator.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "opt_s": self.opt_s.state_dict(), "opt_g": self.opt_g.state_dict(),
                "sched_s": self.sched_s.state_dict(), "sched_g": self.sched_g.state_dict(), "step": self.step,
                "scaler_s": self.scaler_s.state_dict(), "scaler_g": self.scaler_g.state_dict()}

    def load_state(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.generator.load_state_dict(state["generator"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        for name in ("opt_s", "opt_g", "sched_s", "sched_g", "scaler_s", "scaler_g"):
            if name in state:  # (checkpoints from before loss scaling have no scaler state)
                getattr(self, name).load_state_dict(state[name])
        # The config's learning rates win over the checkpoint's (resuming a blown-up run with a smaller one):
        # every schedule here is proportional to its base rate, so the restored rates are rescaled.
        for opt, sched, lr in ((self.opt_s, self.sched_s, self.cfg.optim.student_lr),
                               (self.opt_g, self.sched_g, self.cfg.optim.generator_lr)):
            for i, group in enumerate(opt.param_groups):
                ratio = lr / group["initial_lr"]
                group["lr"] *= ratio
                group["initial_lr"] = sched.base_lrs[i] = lr
                sched._last_lr[i] *= ratio
        self.step = state["step"]


def apply_ddp(d: Distiller, sync_bn: bool = False) -> None:
    """Wrap student and generator in DDP over the initialised process group; batches become per-rank shards.

    Every batch statistic is taken over the global batch, so N ranks compute what 1 rank computes (spec 7.4):
    the generator's and student's train-mode BatchNorm (`GlobalBatchNorm`, or torch's CUDA SyncBatchNorm
    for the generator with `sync_bn`) and, with the teachers in this process, their BN prior.
    The optimisers stay valid: every conversion keeps the same Parameter objects.
    """
    d.rank, d.world_size = dist.get_rank(), dist.get_world_size()
    if d.cfg.train.batch_size % d.world_size:
        raise ConfigError(f"train.batch_size={d.cfg.train.batch_size} is not divisible by {d.world_size} workers")
    dev = next(d.student.parameters()).device
    if sync_bn and dev.type != "cuda":
        raise ConfigError("distributed.sync_bn needs GPU workers (torch's SyncBatchNorm is CUDA-only)")
    if d.world_size > 1:
        group = dist.new_group()  # BN collectives apart from DDP's gradient buckets
        if sync_bn:
            d.generator = nn.SyncBatchNorm.convert_sync_batchnorm(d.generator, group)
        else:
            convert_global_batchnorm(d.generator, group)
        convert_global_batchnorm(d.student, group)
        if isinstance(d.pool, TeacherGroup):  # (Ray teacher actors are outside the process group)
            d.pool_spec.global_batch = True
            d.pool.configure(d.pool_spec)
    ids = [dev.index] if dev.type == "cuda" else None
    d.ddp = {"student": DDP(d.student, device_ids=ids), "generator": DDP(d.generator, device_ids=ids)}
