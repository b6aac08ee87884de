"""Ray Train (V2) around the one engine: each worker runs `cdkd.trainer.train` under DDP.

Ray only places and moves things here: `train_loop_per_worker` builds the same `Run` as the single-process
path, wraps student and generator in DDP, and swaps the checkpoint file for `ray.train.report` checkpoints.
Restore = rerun with the same run directory (= RunConfig storage_path/name).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from typing import Any, Callable

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from ..checkpoint import load_run_checkpoint
from ..config import Config, make_config
from ..data import resolve_root
from ..trainer import build, default_run_dir, train
from .teacher_actors import RayTeacherPool

CKPT_FILE = "last.pt"


class ReportedCheckpoints:
    """Checkpoints through Ray's `report` (Ray Train's: a barrier, every rank calls `save`, rank 0 brings the
    state; or Ray Tune's, in a Tune trial), restored through the matching `get_checkpoint`."""
    location = "the latest reported Ray checkpoint"

    def __init__(self, report: Callable = ray.train.report, get_checkpoint: Callable = ray.train.get_checkpoint,
                 checkpoint_cls: type = Checkpoint) -> None:
        self.report, self.get_checkpoint, self.checkpoint_cls = report, get_checkpoint, checkpoint_cls

    def exists(self) -> bool:
        return self.get_checkpoint() is not None

    def load(self) -> dict[str, Any] | None:
        ckpt = self.get_checkpoint()
        if ckpt is None:
            return None
        self.location = ckpt.path  # where a resume came from (a PBT exploit: another trial's checkpoint)
        with ckpt.as_directory() as d:
            return load_run_checkpoint(os.path.join(d, CKPT_FILE))

    def save(self, state: dict[str, Any] | None, metrics: dict[str, float]) -> None:
        if state is None:
            self.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, os.path.join(d, CKPT_FILE))
            self.report(metrics, checkpoint=self.checkpoint_cls.from_directory(d))


def absolute_paths(cfg: Config) -> Config:
    """Workers run in another cwd (and maybe on another node): make every path in the config absolute."""
    cfg.run_dir = os.path.abspath(default_run_dir(cfg))
    cfg.teachers = [replace(t, path=os.path.abspath(t.path)) for t in cfg.teachers]
    cfg.data.root = os.path.abspath(resolve_root(cfg.data.root))
    if cfg.probe.path:
        cfg.probe.path = os.path.abspath(cfg.probe.path)
    return cfg


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = make_config(config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    device = ray.train.torch.get_device() if cfg.distributed.use_gpu else torch.device("cpu")
    run = build(cfg, with_data=rank == 0 and config.get("with_data", True), pool=config.get("pool"), device=device)
    run.test = config.get("test", True)
    if world > 1:
        run.distiller.enable_ddp(sync_bn=cfg.distributed.sync_bn)
    train(run, resume=True, store=ReportedCheckpoints())  # rank 0 writes result.json into the run directory


def make_trainer(cfg: Config, pool: RayTeacherPool | None = None, threads: int = 0, with_data: bool = True,
                 test: bool = True, callbacks: list | None = None) -> TorchTrainer:
    """A TorchTrainer whose ScalingConfig/RunConfig come from `cfg.distributed`; output lives in cfg.run_dir.

    `with_data=False` skips the real data (evaluation, aggregation): a run on synthetic inputs only;
    `test=False` skips only the test-split evaluation (sweep trials); `callbacks` go to the RunConfig.
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
                           "test": test},
        scaling_config=ScalingConfig(num_workers=dc.workers, use_gpu=dc.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=os.path.basename(run_dir), storage_path=os.path.dirname(run_dir),
                             failure_config=FailureConfig(max_failures=dc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=dc.num_to_keep),
                             callbacks=callbacks or []))
