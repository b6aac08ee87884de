"""The driver of a distillation job on Ray: validate, place the teachers, run Ray Train, collect the result.

Connects to the cluster in RAY_ADDRESS (as `ray job submit` sets it) or starts an embedded local one.
"""
from __future__ import annotations

import json
import os
from typing import Any

import ray

from ..config import Config
from ..errors import CdkdError
from ..trainer import build, has_checkpoint, prepare_selection
from .launch import launch, make_pool
from .train import absolute_paths


def run_on_ray(cfg: Config, resume: bool = False, threads: int = 0) -> dict[str, Any]:
    """Distill with Ray Train workers (or, with workers=0, in this process) and the teachers local or in Ray
    actors; returns rank 0's result."""
    cfg = absolute_paths(cfg)
    dc = cfg.distributed
    if has_checkpoint(cfg.run_dir) and not resume:
        raise CdkdError(f"{cfg.run_dir} already holds a run; pass --resume to continue it or choose another run_dir")
    if dc.teacher_pool == "local":
        build(cfg)  # every input check (data, teachers, models, loss pairing) before Ray starts
    if not ray.is_initialized():
        ray.init()
    if dc.use_gpu and not ray.cluster_resources().get("GPU"):
        raise CdkdError("distributed.use_gpu=true but the Ray cluster has no GPUs")
    pool = make_pool(cfg)
    if pool is not None:
        print(f"[cdkd] teacher actors: {pool.placement}")
    try:
        if dc.workers:  # the probe set, built once here: no worker may build it on shared teachers
            prepare_selection(build(cfg, pool=pool))
            print(f"[cdkd] Ray Train: {dc.workers} worker(s), {'GPU' if dc.use_gpu else 'CPU'}, "
                  f"teachers {'in Ray actors' if pool else 'in each worker'}; run directory {cfg.run_dir}")
        result = launch(cfg, pool, resume=resume, threads=threads)
    except ray.train.TrainingFailedError as e:
        raise CdkdError(f"training failed: {str(e).strip().splitlines()[-1]}") from None
    finally:
        if pool is not None:
            pool.shutdown()
    if not dc.workers:
        return result
    path = os.path.join(cfg.run_dir, "result.json")
    if not os.path.exists(path):
        raise CdkdError(f"training finished but wrote no {path}")
    with open(path) as f:
        out = json.load(f)
    out["ray_checkpoint"] = result.checkpoint.path if result.checkpoint else None
    return out
