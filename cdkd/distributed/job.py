"""The driver of a distillation job on Ray: validate, place the teachers, run Ray Train, collect the result.

Connects to the cluster in RAY_ADDRESS (as `ray job submit` sets it) or starts an embedded local one.
"""
from __future__ import annotations

import json
import os
import signal
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group

from ..config import Config
from ..errors import CdkdError
from ..interrupt import Interrupted, StopSignals, resume_hint
from ..runlock import run_lock
from ..trainer import build, clear_stop_request, has_checkpoint, prepare_selection, request_stop
from .launch import launch, make_pool
from .prepare import check_without_teachers, named_bundles, prepare_on_worker
from .resources import check_can_fit, embedded_cluster, fmt, node_capacities, total, wait_for, worker_bundle
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
    embedded = embedded_cluster()
    # On a cluster (RAY_ADDRESS) with Ray Train workers this driver only schedules: what needs the teachers runs
    # on a worker's resources. With the teachers in actors, their checks run there. Otherwise (this machine does
    # the work) every input check comes first, before Ray starts.
    schedule_only = not embedded and dc.workers > 0
    if schedule_only or dc.teacher_pool == "ray":
        check_without_teachers(cfg)
    else:
        build(cfg)
    if dc.workers == 0 and dc.teacher_pool == "local":  # the engine here, its teachers here: no Ray at all
        return launch(cfg, None, resume=resume, threads=threads)
    if not ray.is_initialized():
        ray.init()  # the cluster in RAY_ADDRESS (`ray job submit` sets it), else an embedded local one
    signals.install()  # over Ray's own SIGTERM handler, which ends the driver at once
    nodes, final = node_capacities(dc, embedded)
    check_can_fit(named_bundles(cfg), nodes, final, "this cluster" if embedded else "the cluster's node types")
    threads = worker_threads(threads, cfg, [n for n in ray.nodes() if n.get("Alive")])
    # the workers' resources are requested now, beside the teachers': an autoscaler starts all nodes at once
    workers_pg = placement_group([worker_bundle(dc)] * dc.workers, strategy="PACK") if schedule_only else None
    pool = None
    try:
        pool = make_pool(cfg)
        if pool is not None:
            print(f"[cdkd] teacher actors: {pool.placement}")
        if workers_pg is not None:
            wait_for([workers_pg.ready()], f"{dc.workers} Ray Train worker(s) of {fmt(worker_bundle(dc))}",
                     total([worker_bundle(dc)] * dc.workers), dc.placement_timeout_s, dc.wait_report_s)
            where = prepare_on_worker(cfg, pool, worker_bundle(dc), workers_pg)
            remove_placement_group(workers_pg)  # Ray Train places its own workers in the room just found
            workers_pg = None
            print(f"[cdkd] checked the run and built its probe set in a Ray task (pid {where['pid']}, node "
                  f"{where['node'][:12]}, {where['device']})")
        elif dc.workers:  # the probe set, built once here: no worker may build it on shared teachers
            prepare_selection(build(cfg, pool=pool))
        if dc.workers:
            print(f"[cdkd] Ray Train: {dc.workers} worker(s), {'GPU' if dc.use_gpu else 'CPU'}, "
                  f"teachers {'in Ray actors' if pool else 'in each worker'}; run directory {cfg.run_dir}")
        result = launch(cfg, pool, resume=resume, threads=threads)
    except ray.train.TrainingFailedError as e:
        raise CdkdError(f"training failed: {str(e).strip().splitlines()[-1]}") from None
    finally:
        if workers_pg is not None:
            remove_placement_group(workers_pg)
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
