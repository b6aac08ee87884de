"""The driver of a distillation job on Ray: validate, place the teachers, run Ray Train, collect the result.

Connects to the cluster in RAY_ADDRESS (as `ray job submit` sets it) or starts an embedded local one.
"""
from __future__ import annotations

import json
import os
import signal
from typing import Any

import ray

from ..config import Config
from ..errors import CdkdError
from ..interrupt import Interrupted, StopSignals, resume_hint
from ..runlock import run_lock
from ..trainer import build, clear_stop_request, has_checkpoint, prepare_selection, request_stop
from .launch import launch, make_pool
from .train import absolute_paths


def run_on_ray(cfg: Config, resume: bool = False, threads: int = 0) -> dict[str, Any]:
    """Distill with Ray Train workers (or, with workers=0, in this process) and the teachers local or in Ray
    actors; returns rank 0's result.

    This driver holds the run directory's lock for the whole run. A first SIGINT/SIGTERM here (`ray job stop`
    sends SIGTERM) asks the workers to checkpoint and stop (`<run_dir>/.stop`), then raises `Interrupted`."""
    cfg = absolute_paths(cfg)
    with run_lock(cfg.run_dir, "run", hint=" (Ctrl-C, kill -TERM or `ray job stop` saves a checkpoint)"):
        clear_stop_request(cfg.run_dir)
        try:
            with StopSignals(on_second=lambda s: clear_stop_request(cfg.run_dir)) as signals:
                signals.on_first = lambda s: request_stop(cfg.run_dir, signal.Signals(s).name)
                result = _run_on_ray(cfg, resume, threads, signals)
        finally:
            clear_stop_request(cfg.run_dir)
        if signals.signum is not None:
            at = result.get("interrupted") if isinstance(result, dict) else None
            raise Interrupted(f"interrupted by {signals.name}: "
                              + (f"the workers checkpointed at iteration {at}" if at is not None else
                                 "stopped before the workers started") + f"; {resume_hint(cfg.run_dir)}",
                              signals.exit_code)
        return result


def worker_threads(threads: int, cfg: Config, nodes: list[dict[str, Any]]) -> int:
    """Torch threads per Ray Train worker: `threads` (from cpus_per_worker), or, on a one-node cluster of this
    machine's cores (the embedded local one) with the teachers inside the workers, the cores shared out among
    the workers. Ray reserves `cpus_per_worker` CPUs for scheduling but does not pin them: a demo worker that
    asks for 1 CPU would otherwise run one thread on a machine of 2 or more."""
    dc = cfg.distributed
    cores = os.cpu_count() or 1
    local = len(nodes) == 1 and int(nodes[0].get("Resources", {}).get("CPU", 0)) == cores
    if local and dc.workers and dc.teacher_pool == "local" and not dc.use_gpu:
        return max(threads, cores // dc.workers)
    return threads


def _run_on_ray(cfg: Config, resume: bool, threads: int, signals: StopSignals) -> dict[str, Any]:
    dc = cfg.distributed
    if has_checkpoint(cfg.run_dir) and not resume:
        raise CdkdError(f"{cfg.run_dir} already holds a run; pass --resume to continue it or choose another run_dir")
    if dc.teacher_pool == "local":
        build(cfg)  # every input check (data, teachers, models, loss pairing) before Ray starts
    if not ray.is_initialized():
        ray.init()
    signals.install()  # over Ray's own SIGTERM handler, which ends the driver at once
    threads = worker_threads(threads, cfg, [n for n in ray.nodes() if n.get("Alive")])
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
    stopped = os.path.join(cfg.run_dir, "interrupted.json")
    if os.path.exists(stopped):  # rank 0 stopped on the driver's request: no result.json
        with open(stopped) as f:
            out = json.load(f)
        os.remove(stopped)
        return out
    path = os.path.join(cfg.run_dir, "result.json")
    if not os.path.exists(path):
        raise CdkdError(f"training finished but wrote no {path}")
    with open(path) as f:
        out = json.load(f)
    out["ray_checkpoint"] = result.checkpoint.path if result.checkpoint else None
    return out
