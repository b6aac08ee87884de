"""Build a run from its config and drive the engine: checkpoints, resume, metrics, samples, evaluation, export.

Everything that can be wrong with the input (config values, data path, teacher files, class counts) is
checked in `build` before the first iteration.
"""
from __future__ import annotations

import copy
import glob
import inspect
import json
import os
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn as nn
from torchvision.utils import save_image

from .aggregation import fit_aggregator
from .checkpoint import atomic_save, export_student, rng_state, set_rng_state
from .config import Config
from .data import ImageData, in_space, load_data
from .engine import Distiller, make_optimizers, models_channels_last, pair_losses
from .errors import CdkdError, ConfigError, NonFiniteLossError, first_line
from .global_bn import local_batch_stats
from .interrupt import Interrupted, StopSignals, resume_hint
from .metrics import MetricsWriter
from .models import create_model
from .models.generators import pick_generator
from .models.students import as_student
from .oom import guard_build, oom_guard
from .probe import ensure_probe, probe_metrics
from .progress import Progress
from .registry import MODELS
from .resume import Resume, check_metrics, check_teachers, load_newest_good, prev_path, teacher_record
from .resume import options as resume_options
from .runlock import check_free, run_lock
from .supervised import eval_mode, subset
from .teacher_pool import TeacherGroup, TeacherPool, fast_bf16
from .tasks import Task, get_task, model_task
from .teachers import load_teacher

RESIZABLE = ("camvid",)  # data sets read at any size (`data.size`)


@dataclass
class Run:
    cfg: Config
    distiller: Distiller
    data: ImageData | None
    input_shape: tuple[int, ...]
    device: torch.device
    info: dict[str, Any] = field(default_factory=dict)
    test: bool = True                       # evaluate on the test split at the end (sweep trials: False)
    probe: dict[str, Any] | None = None     # set by `prepare_selection`
    val: Any = None                         # the optional labeled validation subset (train split)
    task: Task = field(default_factory=lambda: get_task("classification"))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


def resolve_auto(cfg: Config, device: torch.device) -> Config:
    """The config with `train.amp=auto` and `train.amp_scope=auto` made concrete for `device` (what the run
    records is what ran): bf16 only where bf16 convolutions are fast (`fast_bf16`: on 2-core Xeons without AMX
    they measured 1.5x slower than fp32, on an AMD EPYC (Zen 4) 2x faster); elsewhere fp32."""
    if "auto" not in (cfg.train.amp, cfg.train.amp_scope):
        return cfg
    cfg = copy.deepcopy(cfg)
    fast = fast_bf16(device)
    if cfg.train.amp == "auto":
        cfg.train.amp = "bf16" if fast else "none"
    if cfg.train.amp_scope == "auto":
        cfg.train.amp_scope = "all" if fast and cfg.train.amp != "none" else "generator"
    return cfg


def precision_line(cfg: Config, device: torch.device) -> str:
    """One line saying what precision and how many threads the run uses, and why."""
    why = "fast bf16 here" if fast_bf16(device) else "bf16 not fast here"
    amp = "fp32" if cfg.train.amp == "none" else f"{cfg.train.amp} autocast on the " + \
        ("generator" if cfg.train.amp_scope == "generator" else "generator, student and teachers")
    return f"[cdkd] precision: {amp} ({why}); {torch.get_num_threads()} threads on {device}"


@guard_build
def build(cfg: Config, with_data: bool = True, pool: TeacherPool | None = None,
          device: torch.device | None = None) -> Run:
    """Validate all input and construct teachers, student, generator and engine (no training yet).

    Without `pool` the teachers are loaded in this process; a Ray teacher pool arrives already validated.
    """
    torch.set_flush_denormal(True)  # denormals in small late-training activations cost up to 4x on CPU
    device = device or pick_device(cfg.train.device)
    cfg = resolve_auto(cfg, device)
    if not cfg.teachers:
        raise ConfigError("no teachers configured (teachers: [{path: ...}, ...])")
    wants_data = with_data and cfg.data.name != "none"
    size = tuple(cfg.data.size) or tuple(cfg.input_shape[1:]) or None
    # a resizable data set (CamVid) with no size given is read at the teachers' size, so after loading them
    data = load_data(cfg.data.name, cfg.data.root, cfg.data.download, size) \
        if wants_data and (size or cfg.data.name not in RESIZABLE) else None
    requested = tuple(cfg.input_shape) or (tuple(data.input_shape) if data else None)
    if pool is None:
        pool = TeacherGroup.validated([load_teacher(spec) for spec in cfg.teachers], requested)
    num_classes, shape = pool.num_classes, pool.input_shape
    if wants_data and data is None:
        data = load_data(cfg.data.name, cfg.data.root, cfg.data.download, tuple(shape[1:]))
    task = get_task(pool.task)
    if data is not None and data.task != task.name:
        raise CdkdError(f"the teachers are {task.name} models but data set {cfg.data.name!r} is for {data.task}")
    if task.name != "classification" and (cfg.loss.w_ce > 0 or cfg.loss.w_ce_gen > 0 or cfg.loss.w_feat > 0):
        raise ConfigError(f"{task.name} teachers: loss.w_ce, loss.w_ce_gen (image-level preset labels have no "
                          "per-pixel meaning) and loss.w_feat (no pooled feature) must be 0")
    if data is not None and tuple(data.input_shape) != tuple(shape):
        raise CdkdError(f"teachers expect input {tuple(shape)} but data set {cfg.data.name!r} has "
                        f"{tuple(data.input_shape)}")
    if data is not None and data.num_classes != num_classes:
        raise CdkdError(f"teachers predict {num_classes} classes but data set {cfg.data.name!r} has {data.num_classes}")
    if data is not None:
        data = in_space(data, pool.input_space)
    torch.manual_seed(cfg.train.seed)  # after loading teachers: their construction must not shift the student's init
    student = create_model(cfg.model.student, **student_kwargs(cfg, pool, num_classes, shape))
    if model_task(student) != task.name:
        raise ConfigError(f"model.student={cfg.model.student!r} is a {model_task(student)} student but "
                          f"the teachers are {task.name} models"
                          + (" (use mh_lraspp_mbv3_small)" if task.name == "segmentation" else ""))
    conditional = cfg.loss.w_ce > 0 or cfg.loss.w_ce_gen > 0
    gen_name = pick_generator(cfg.model.generator, shape, conditional)
    gen_kwargs = dict(nz=cfg.model.nz, ngf=cfg.model.ngf, img_size=tuple(shape[-2:]), nc=shape[0])
    if gen_name.startswith("cond"):
        gen_kwargs["num_classes"] = num_classes
    generator = create_model(gen_name, **gen_kwargs)
    if cfg.train.channels_last:
        generator = generator.to(memory_format=torch.channels_last)
    if models_channels_last(cfg, tuple(shape)):
        student = student.to(memory_format=torch.channels_last)
    student, generator = as_student(student).to(device), generator.to(device)
    pairing = pair_losses(pool, student, shape, cfg.loss)  # may add the student's feature projection, so first
    distiller = Distiller(cfg, pool, student, generator, num_classes, make_optimizers(cfg, student, generator),
                          pairing).to(device)
    info = {"task": task.name, "num_classes": num_classes, "student_params": distiller.student.deployed_params(),
            "teacher_params": pool.params, "teachers": pool.names, "input_shape": list(shape),
            "generator": gen_name, "student_input": student_input(pool)}
    return Run(cfg, distiller, data, shape, device, info, task=task)


def student_input(pool: TeacherPool) -> dict[str, Any]:
    """What the exported student takes: the teachers' normalised input where they share one normalisation,
    raw [0, 1] pixels (normalised inside the export) where they differ."""
    space, declared = pool.input_space, {n for n in pool.norms if n is not None}
    if space is None:
        return {"input": "as the teachers (normalisation unknown)"}
    if len(declared) == 1:
        return {"input": "normalized", **space.to_dict()}
    return {"input": "raw [0, 1] pixels", "normalized_inside": space.to_dict()}


def student_kwargs(cfg: Config, pool: TeacherPool, num_classes: int, shape: tuple[int, ...]) -> dict[str, Any]:
    """The student factory's arguments: classes and channels of the teachers, one header per teacher."""
    params = inspect.signature(MODELS.get(cfg.model.student)).parameters
    unknown = sorted(set(cfg.model.student_kwargs) - set(params))
    if unknown:
        raise ConfigError(f"model.student_kwargs: {cfg.model.student!r} takes no {', '.join(map(repr, unknown))} "
                          f"(it takes {', '.join(params)})")
    kwargs = {"num_classes": num_classes, "in_chans": shape[0], **cfg.model.student_kwargs}
    if "num_headers" in params:
        kwargs.setdefault("num_headers", pool.num_teachers)  # header k imitates teacher k
    return kwargs


@torch.no_grad()
def evaluate(run: Run, aggregator: nn.Module | None = None) -> dict[str, Any]:
    """The task's test metrics of each teacher, the teacher ensemble (mean logits), the student and its headers."""
    d = run.distiller
    return run.task.evaluate(lambda x: d.pool.logits(x).to(x.device), d.student, run.data.test,
                             run.info["num_classes"], run.device, aggregator)


def prepare_selection(run: Run) -> None:
    """Load (or build, on first use) the probe set and the optional labeled validation subset."""
    cfg, d = run.cfg, run.distiller
    t0 = time.perf_counter()
    run.probe, built = ensure_probe(d.pool, run.info["num_classes"], run.input_shape, cfg, run.device)
    if built:
        run.info["probe_build_s"] = round(time.perf_counter() - t0, 1)
    if cfg.probe.val_samples:
        if run.data is None:
            raise ConfigError("probe.val_samples needs the data set (val samples come from its train split)")
        # a data set with its own held-out split (CamVid's val/) is scored there, else on a train subset
        run.val = subset(run.data.val if run.data.val is not None else run.data.train, cfg.probe.val_samples,
                         seed=cfg.probe.seed)


def selection_metrics(run: Run) -> dict[str, float]:
    """What a sweep may select on: the data-free probe metrics, and val_acc if labeled samples were given."""
    d = run.distiller
    out = probe_metrics(d.student, run.probe, run.device, run.task) if run.probe is not None else {}
    if run.val is not None:
        out[f"val_{run.task.metric}"] = run.task.score(d.student, run.val, run.info["num_classes"], run.device)
    return out


class CheckpointStore(Protocol):
    """Where run checkpoints go: a local file (`FileCheckpoints`) or Ray Train (`cdkd.distributed`)."""
    location: str

    def exists(self) -> bool: ...
    def load(self) -> dict[str, Any] | None: ...
    def save(self, state: dict[str, Any] | None, metrics: dict[str, float]) -> None: ...


class FileCheckpoints:
    """`<run_dir>/checkpoints/last.pt`, atomically replaced; the one it replaces is kept as `prev.pt`.

    `from_good`: when `last.pt` cannot be read, `load` continues from `prev.pt` (`--resume-from-good`);
    `loaded_from` is the file `load` read."""

    def __init__(self, path: str) -> None:
        self.location = self.loaded_from = path
        self.from_good = False

    def exists(self) -> bool:
        return os.path.exists(self.location)

    def load(self) -> dict[str, Any] | None:
        if not self.exists():
            return None
        self.loaded_from, state = load_newest_good(self.location, self.from_good)
        return state

    def save(self, state: dict[str, Any] | None, metrics: dict[str, float]) -> None:
        if state is not None:
            atomic_save(state, self.location, keep_previous=prev_path(self.location))


def has_checkpoint(run_dir: str) -> bool:
    """Whether `run_dir` holds a checkpoint to resume: the local `checkpoints/last.pt` or Ray Train's `checkpoint_*`.

    A run directory in use by another process is an error here already (one line naming its PID)."""
    check_free(run_dir, "run", hint=" (Ctrl-C or kill -TERM saves a checkpoint)")
    return bool(run_dir) and (os.path.exists(os.path.join(run_dir, "checkpoints", "last.pt"))
                              or bool(glob.glob(os.path.join(run_dir, "checkpoint_*"))))


def default_run_dir(cfg: Config) -> str:
    if not cfg.run_dir:
        cfg.run_dir = os.path.join("runs", f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}")
    return cfg.run_dir


def train(run: Run, resume: bool | Resume = False, store: CheckpointStore | None = None,
          lock: bool = True) -> dict[str, Any]:
    """Run (or continue) the distillation; returns the final result dict, also written to result.json.

    Under DDP every rank calls this; rank 0 alone writes metrics, samples and results (others return {}).
    `resume` may be a `Resume` with the `--resume-allow-gaps` / `--resume-from-good` options. `lock`: hold the
    run directory's lock (rank 0); Ray Train workers pass False (their driver holds it).
    A first SIGINT/SIGTERM (or, under Ray Train, the driver's stop file) ends the run after the current
    iteration with a checkpoint and `Interrupted`; a second one stops at once.
    """
    cfg, d = run.cfg, run.distiller
    rd = default_run_dir(cfg)
    main = d.rank == 0
    opts = resume_options(resume)
    store = store or FileCheckpoints(os.path.join(rd, "checkpoints", "last.pt"))
    if isinstance(store, FileCheckpoints):
        store.from_good = opts.from_good
    with ExitStack() as held:
        if lock and main:
            held.enter_context(run_lock(rd, "run", hint=" (Ctrl-C or kill -TERM saves a checkpoint)"))
            clear_stop_request(rd)  # a stale request of an earlier, finished run
        signals = held.enter_context(StopSignals())
        if store.exists() and not resume:
            raise CdkdError(f"{rd} already holds a run; pass --resume to continue it or choose another run_dir")
        if main:
            check_writable(rd)
        metrics = MetricsWriter(os.path.join(rd, "metrics"), tensorboard=main) if main else None
        state = store.load() if resume else None
        where = getattr(store, "loaded_from", store.location)
        wall0 = 0.0  # distillation seconds before this process: distill_wall_s counts the whole run across resumes
        gap: dict[str, Any] = {}
        if state is not None:
            check_same_run(state.get("config", {}), cfg, where)
            check_teachers(state.get("teachers"), teacher_record(d.pool, cfg), where)
            if metrics:
                gap = check_metrics(metrics.directory, state["engine"]["step"], opts.allow_gaps)
            wall0 = state.get("wall_s", 0.0)
            d.load_state(state["engine"])
            set_rng_state(state["rng"])
            if metrics:
                metrics.drop_after(d.step)
            print(f"[cdkd] resumed {rd} at iteration {d.step} from {where}")
            if main:  # provenance: a crash restart, or a PBT exploit's donor checkpoint
                os.makedirs(rd, exist_ok=True)
                with open(os.path.join(rd, "resumes.jsonl"), "a") as f:
                    f.write(json.dumps({"iteration": d.step, "from": where, "time": time.time(), **gap}) + "\n")
        if main:
            print(precision_line(cfg, run.device))
            with oom_guard(cfg, "while building the probe set"):
                prepare_selection(run)
            os.makedirs(os.path.join(rd, "samples"), exist_ok=True)
            with open(os.path.join(rd, "config.yaml"), "w") as f:
                f.write(cfg.to_yaml())
        last: dict[str, float] = {}
        teachers = teacher_record(d.pool, cfg)

        saved_at = d.step if state is not None else -1  # the iteration of the newest checkpoint
        best = state.get("best") if state is not None else None  # train.keep_best: the best student so far

        def checkpoint() -> None:
            nonlocal saved_at
            if not d.finite():  # a step that made the weights non-finite never replaces the last good checkpoint
                raise NonFiniteLossError(f"non-finite student or generator weights at iteration {d.step}; stopping "
                                         f"({last_good(store)})")
            if metrics:
                metrics.flush()
            wall = wall0 + time.perf_counter() - t0
            store.save({"engine": d.state(), "rng": rng_state(), "config": cfg.to_dict(), "wall_s": wall,
                        "teachers": teachers, "best": best} if main else None, {"iteration": d.step, **last})
            saved_at = d.step

        t = cfg.train
        progress = Progress(t.iterations, cfg.method, start=d.step, log_every=t.log_every) if main else None
        t0, stopped, interrupted = time.perf_counter(), None, False
        first = True
        try:
            while d.step < t.iterations:
                try:
                    with oom_guard(cfg, "in the first iteration") if first else nullcontext():
                        logs = d.train_iteration()
                except NonFiniteLossError as e:
                    raise NonFiniteLossError(f"{e} ({last_good(store)})") from None
                first = False
                it = d.step
                elapsed = wall0 + time.perf_counter() - t0
                last = logs
                if gap:
                    logs["resume_gap"] = float(gap["missing_rows"])  # missing rows before this one (resumes.jsonl)
                    gap = {}
                asked = signals.signum is not None or (main and stop_requested(rd))
                budget = bool(t.budget_s) and elapsed > t.budget_s
                budget, interrupted = agree(budget, asked, d.world_size)
                interrupted = interrupted and it < t.iterations  # the last iteration done: the run just ends
                stop = (budget or interrupted) and it < t.iterations
                if main:
                    if it % t.ckpt_every == 0 or it == t.iterations or stop:  # every checkpoint carries the metric
                        logs.update(selection_metrics(run))
                        best = keep_if_best(best, logs, it, d.student, t.keep_best, run.task.metric)
                    if t.eval_every and it % t.eval_every == 0 and run.data is not None and run.test:
                        e0 = time.perf_counter()
                        logs[f"student_{run.task.metric}"] = run.task.score(  # a curve only
                            d.student, run.data.test, run.info["num_classes"], run.device)
                        t0 += time.perf_counter() - e0  # a test-split report, not distillation: not wall time
                    metrics.log({"iteration": it, "time_s": elapsed, **logs})
                    progress.update(logs)
                    if it % t.sample_every == 0 or it == t.iterations:
                        save_samples(d, os.path.join(rd, "samples", f"iter_{it:06d}.png"), run.task)
                if it % t.ckpt_every == 0:
                    checkpoint()
                if stop and interrupted:
                    break
                if stop:
                    stopped = f"time budget of {t.budget_s:.0f}s reached at iteration {it}"
                    print(f"[cdkd] {stopped}")
                    break
            wall = wall0 + time.perf_counter() - t0
            if progress:
                progress.close()
            if saved_at != d.step:  # (once per iteration: prev.pt stays the older one)
                checkpoint()
        except Interrupted as e:  # a second signal: at once, no new checkpoint
            if progress:
                progress.close()
            raise Interrupted(f"{e} at iteration {d.step}; {last_good(store).split(';')[0]}; {resume_hint(rd)}",
                              e.exit_code) from None
        if interrupted and (lock or signals.signum is not None):
            why = signals.name or f"a stop request ({os.path.join(rd, STOP_FILE)})"
            raise Interrupted(f"interrupted by {why} at iteration {d.step}; checkpoint written to {store.location}; "
                              f"{resume_hint(rd)}", signals.exit_code if signals.signum else 143)
        if interrupted:  # a Ray Train worker asked to stop by its driver: the driver reports it
            return {"interrupted": d.step} if main else {}
        return finish(run, wall, stopped, best) if main else {}


STOP_FILE = ".stop"


def stop_requested(run_dir: str) -> bool:
    """Whether the driver of a Ray Train run asked its workers to checkpoint and stop (`<run_dir>/.stop`)."""
    return os.path.exists(os.path.join(run_dir, STOP_FILE))


def request_stop(run_dir: str, why: str) -> None:
    with open(os.path.join(run_dir, STOP_FILE), "w") as f:
        f.write(why + "\n")


def clear_stop_request(run_dir: str) -> None:
    try:
        os.remove(os.path.join(run_dir, STOP_FILE))
    except FileNotFoundError:
        pass


def agree(budget: bool, interrupt: bool, world_size: int) -> tuple[bool, bool]:
    """Rank 0's view decides for all ranks (time budget, stop request), so DDP workers stop at the same
    iteration."""
    if world_size == 1:
        return budget, interrupt
    flag = torch.tensor([float(budget), float(interrupt)])
    dist.broadcast(flag, 0)
    return bool(flag[0].item()), bool(flag[1].item())


def last_good(store: CheckpointStore) -> str:
    if store.exists():
        return f"last good checkpoint: {store.location}; resume it with a smaller learning rate"
    return "no checkpoint was written yet"


def check_writable(run_dir: str) -> None:
    """The run directory can be created and written (before any work), else one line saying why not."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise CdkdError(f"run_dir {run_dir} is not writable ({first_line(e)})") from None


# Config keys a resumed run must share with its checkpoint: they decide the shapes of what is restored.
# (Loss weights, learning rates, EMA momentum and the iteration count may change: PBT exploits and longer runs.)
RESUME_KEYS = ("method", "model", "train.ema")


def check_same_run(saved: dict[str, Any], cfg: Config, where: str) -> None:
    now = cfg.to_dict()

    def get(d: dict, key: str) -> Any:
        for part in key.split("."):
            d = d.get(part, {}) if isinstance(d, dict) else {}
        return d

    def flat(prefix: str, value: Any) -> dict[str, Any]:
        if isinstance(value, dict) and value:
            return {k: v for sub, inner in value.items() for k, v in flat(f"{prefix}.{sub}", inner).items()}
        return {prefix: value}

    differ = []
    for key in RESUME_KEYS:
        a, b = flat(key, get(saved, key)), flat(key, get(now, key))
        differ += [f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if differ:
        raise CdkdError(f"cannot resume {where}: the config differs in {', '.join(differ)}; resume with the "
                        "run's own config.yaml, or start a new run_dir")


@torch.no_grad()
def save_samples(d: Distiller, path: str, task: Task, n: int = 64) -> None:
    """A grid of generated images; for dense teachers each image beside the teachers' predicted label map."""
    dense = task.name != "classification"
    n = 16 if dense else n
    with local_batch_stats():  # rank 0 alone: no collectives
        x, _ = d.sample(d.generator, max(n, 2))
    x = x[:n]
    t = d.pool.logits(x).float().cpu() if dense else None
    save_image(task.sample_grid(x.float().cpu(), t), path, nrow=8)


def fit_run_aggregator(run: Run) -> tuple[nn.Module, dict[str, Any]]:
    """The attention aggregator of `aggregation.num_samples` labeled train samples (seeded: refitting it on the
    same student gives the same one, which is how `cdkd export` re-exports a run)."""
    a = run.cfg.aggregation
    return fit_aggregator(run.distiller.student, run.data.train, a.num_samples, run.info["num_classes"],
                          a.val_fraction, a.epochs, a.lr, a.batch_size, run.cfg.train.seed, run.device)


def selection_key(keep_best: str, metric: str) -> str | None:
    """The metric `train.keep_best` selects on: val_<metric> (held-out labels) or probe_agreement (data-free)."""
    return {"val": f"val_{metric}", "probe": "probe_agreement"}.get(keep_best)


def keep_if_best(best: dict[str, Any] | None, logs: dict[str, float], it: int, student: nn.Module,
                 keep_best: str, metric: str) -> dict[str, Any] | None:
    """The best checkpoint's record ({on, iteration, value, student weights}) after this one's metrics.

    Early stopping on a held-out metric: the curve of a data-free student is noisy (an adversarial game), so the
    last iterate is not always the best one; the choice never looks at the test split."""
    key = selection_key(keep_best, metric)
    if key is None or key not in logs or logs[key] != logs[key]:
        return best
    if best is None or logs[key] > best["value"]:
        return {"on": key, "iteration": it, "value": float(logs[key]),
                "student": {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}}
    return best


def finish(run: Run, wall: float, stopped: str | None, best: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg, d = run.cfg, run.distiller
    result: dict[str, Any] = {"method": cfg.method, "iterations": d.step, "distill_wall_s": round(wall, 1),
                              **run.info}
    if best is not None:  # report and export the selected checkpoint's student (the run's state stays the last)
        d.student.load_state_dict(best["student"])
        result["selected"] = {"on": best["on"], "iteration": best["iteration"], "value": round(best["value"], 4)}
        print(f"[cdkd] keep_best: the student of iteration {best['iteration']} ({best['on']} "
              f"{best['value']:.4f}; last iteration {d.step})")
    aggregator = None
    result.update(selection_metrics(run))
    if run.data is not None and run.test:
        if cfg.aggregation.num_samples > 0:
            aggregator, agg_info = fit_run_aggregator(run)
            result.update(agg_info)
        result.update(evaluate(run, aggregator))
    if stopped:
        result["stopped"] = stopped
    export_path = os.path.join(cfg.run_dir, "student.pt2")
    with eval_mode(d.student):
        exported = export_student(d.student.cpu(), aggregator.cpu() if aggregator else None, run.input_shape,
                                  export_path, run.info["student_input"].get("normalized_inside"))
    d.student.to(run.device)
    result["exported_student"] = export_path
    result["exported_onnx"] = exported["onnx"]
    with open(os.path.join(cfg.run_dir, "student.json"), "w") as f:  # what the exported student takes and gives
        json.dump({"input_shape": list(run.input_shape), **run.info["student_input"],
                   "output": run.task.output(run.info["num_classes"]), "teachers": run.info["teachers"],
                   "files": [p for p in (exported["pt2"], exported["onnx"]) if p]}, f, indent=2)
    with open(os.path.join(cfg.run_dir, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def format_table(result: dict[str, Any]) -> str:
    m = "miou" if result.get("task") == "segmentation" else "acc"
    if f"student_{m}" not in result:  # a data-free run: the probe metric and the losses are the report
        lines = [f"data-free run (data.name: none): no test {'mIoU' if m == 'miou' else 'accuracy'}"]
        lines += [f"{k:<34}{result[k]:>10.4f}" for k in ("probe_agreement", "probe_tv", f"val_{m}") if k in result]
        lines.append(f"student params {result['student_params']:,} / ensemble params {result['teacher_params']:,}")
        return "\n".join(lines)
    rows = [(f"teacher {i}", a) for i, a in enumerate(result.get(f"teacher_{m}", []))]
    rows += [("teacher ensemble", result.get(f"ensemble_{m}")),
             ("student (mean of headers)", result.get(f"student_{m}"))]
    if f"student_{m}_attention" in result:
        rows.append(("student (attention aggregation)", result[f"student_{m}_attention"]))
    lines = [f"{'model':<34}{'test ' + ('mIoU' if m == 'miou' else 'acc'):>10}", "-" * 44]
    lines += [f"{name:<34}{acc:>10.4f}" for name, acc in rows if acc is not None]
    if "probe_agreement" in result:
        lines.append(f"{'probe agreement (data-free)':<34}{result['probe_agreement']:>10.4f}")
    lines.append(f"student params {result['student_params']:,} / ensemble params {result['teacher_params']:,}")
    return "\n".join(lines)
