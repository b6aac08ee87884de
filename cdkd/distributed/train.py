"""Ray Train (V2) around the one engine: each worker runs `cdkd.trainer.train` under DDP.

Ray only places and moves things here: `train_loop_per_worker` builds the same `Run` as the single-process
path, wraps student and generator in DDP, and swaps the checkpoint file for `ray.train.report` checkpoints.
Restore = rerun with the same run directory (= RunConfig storage_path/name).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import replace
from typing import Any, Callable

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ..checkpoint import load_run_checkpoint
from ..config import Config, make_config
from ..data import resolve_root
from ..engine import apply_ddp
from ..errors import CdkdError
from ..resume import Resume
from ..trainer import build, default_run_dir, train
from .teacher_actors import RayTeacherPool

CKPT_FILE = "last.pt"


class ReportedCheckpoints:
    """Checkpoints through Ray's `report` (Ray Train's: a barrier, every rank calls `save`, rank 0 brings the
    state; or Ray Tune's, in a Tune trial), restored through the matching `get_checkpoint`.

    `run_dir` (Ray Train runs): also look there for a newer complete `checkpoint_*` than the one Ray restores.
    A driver killed after a checkpoint was written but before Ray's controller recorded it would otherwise
    resume from the older one.
    """
    location = "the latest reported Ray checkpoint"

    def __init__(self, report: Callable = ray.train.report, get_checkpoint: Callable = ray.train.get_checkpoint,
                 checkpoint_cls: type = Checkpoint, run_dir: str = "") -> None:
        self.report, self.get_checkpoint, self.checkpoint_cls = report, get_checkpoint, checkpoint_cls
        self.run_dir = run_dir

    def exists(self) -> bool:
        return self.get_checkpoint() is not None or any(
            os.path.exists(os.path.join(d, CKPT_FILE)) for d in checkpoint_dirs(self.run_dir))

    def load(self) -> dict[str, Any] | None:
        ckpt = self.get_checkpoint()
        newer = newest_complete(self.run_dir)
        if ckpt is not None and newer is not None and os.path.abspath(ckpt.path) == os.path.abspath(newer[0]):
            self.location, state = newer  # Ray's checkpoint is the newest complete one: read once, above
            return state
        state = None
        if ckpt is not None:
            self.location = ckpt.path  # where a resume came from (a PBT exploit: another trial's checkpoint)
            with ckpt.as_directory() as d:
                state = load_run_checkpoint(os.path.join(d, CKPT_FILE))
        if newer is not None and (state is None or newer[1]["engine"]["step"] > state["engine"]["step"]):
            self.location, state = newer
        return state

    def save(self, state: dict[str, Any] | None, metrics: dict[str, float]) -> None:
        if state is None:
            self.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, os.path.join(d, CKPT_FILE))
            self.report(metrics, checkpoint=self.checkpoint_cls.from_directory(d))


def checkpoint_dirs(run_dir: str) -> list[str]:
    """Ray Train's `checkpoint_<date and time>` directories in `run_dir`, newest first (the names sort by age)."""
    if not run_dir or not os.path.isdir(run_dir):
        return []
    return [os.path.join(run_dir, n) for n in sorted(os.listdir(run_dir), reverse=True) if n.startswith("checkpoint_")]


def newest_complete(run_dir: str) -> tuple[str, dict[str, Any]] | None:
    """(path, state) of the newest `checkpoint_*` in `run_dir` whose file reads completely, or None."""
    for path in checkpoint_dirs(run_dir):
        try:
            return path, load_run_checkpoint(os.path.join(path, CKPT_FILE))
        except CdkdError:  # missing or cut short: a checkpoint still being written when the driver died
            continue
    return None


def absolute_paths(cfg: Config) -> Config:
    """Workers run in another cwd (and maybe on another node): make every path in the config absolute."""
    cfg.run_dir = os.path.abspath(default_run_dir(cfg))
    cfg.teachers = [replace(t, path=os.path.abspath(t.path)) for t in cfg.teachers]
    cfg.data.root = os.path.abspath(resolve_root(cfg.data.root))
    if cfg.probe.path:
        cfg.probe.path = os.path.abspath(cfg.probe.path)
    return cfg


class ReportLineFilter(logging.Filter):
    """Drops Ray Train's per-report worker line ("Reporting training result ..."), one per checkpoint.

    `LoggingConfig(log_level)` filters the `ray.train` loggers, but Ray 2.60 logs that line at INFO under a
    logger named by its file path, which propagates to the worker's root console handler. A filter on that
    handler (plain `logging`, no Ray internals) keeps it off the console; `log_level: INFO` lets it through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno < logging.WARNING and str(record.msg).startswith("Reporting training result"))


def quiet_report_lines(level: str) -> None:
    """Install `ReportLineFilter` on the root handlers of this (worker) process, unless `level` is INFO or lower."""
    if logging.getLevelName(level) <= logging.INFO:
        return
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, ReportLineFilter) for f in handler.filters):
            handler.addFilter(ReportLineFilter())


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = make_config(config["config"])
    quiet_report_lines(cfg.distributed.log_level)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    device = ray.train.torch.get_device() if cfg.distributed.use_gpu else torch.device("cpu")
    run = build(cfg, with_data=rank == 0 and config.get("with_data", True), pool=config.get("pool"), device=device)
    run.test = config.get("test", True)
    if world > 1:
        apply_ddp(run.distiller, sync_bn=cfg.distributed.sync_bn)
    out = train(run, resume=config.get("resume") or True, store=ReportedCheckpoints(run_dir=cfg.run_dir),
                lock=False)  # rank 0 writes result.json; the driver holds the run directory's lock
    if "interrupted" in out:  # stopped on the driver's request (its SIGINT/SIGTERM), after a checkpoint
        with open(os.path.join(cfg.run_dir, "interrupted.json"), "w") as f:
            json.dump(out, f)


def make_trainer(cfg: Config, pool: RayTeacherPool | None = None, threads: int = 0, with_data: bool = True,
                 test: bool = True, callbacks: list | None = None, resume: Any = None) -> TorchTrainer:
    """A TorchTrainer whose ScalingConfig/RunConfig come from `cfg.distributed`; output lives in cfg.run_dir.

    `with_data=False` skips the real data (evaluation, aggregation): a run on synthetic inputs only;
    `test=False` skips only the test-split evaluation (sweep trials); `callbacks` go to the RunConfig;
    `resume`: a `cdkd.resume.Resume` passes its options (allow gaps, from good) to the workers.
    """
    cfg = absolute_paths(cfg)
    dc = cfg.distributed
    run_dir = cfg.run_dir
    resources = {"CPU": dc.cpus_per_worker, **dc.worker_resources}
    if dc.use_gpu:
        resources["GPU"] = dc.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "pool": pool, "threads": threads, "with_data": with_data,
                           "test": test, "resume": resume if isinstance(resume, Resume) else None},
        scaling_config=ScalingConfig(num_workers=dc.workers, use_gpu=dc.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=os.path.basename(run_dir), storage_path=os.path.dirname(run_dir),
                             failure_config=FailureConfig(max_failures=dc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=dc.num_to_keep),
                             logging_config=LoggingConfig(log_level=dc.log_level),  # chatter to log files only
                             callbacks=callbacks or []))
