"""What the distillation benches share: calibrating the iteration count to a budget, mean +- std over seeds,
and the Ray teacher pool with its time split and the overlap comparison (`--overlap`)."""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable


def seconds_per_iteration(distiller: Any, warmup: int) -> float:
    """Time `warmup` iterations after one untimed one (allocator and oneDNN caches)."""
    distiller.train_iteration()
    t0 = time.perf_counter()
    for _ in range(warmup):
        distiller.train_iteration()
    return (time.perf_counter() - t0) / warmup


def calibrated_iterations(per_it: float, budget_s: float, max_iterations: int, min_iterations: int = 1) -> int:
    """Iterations that fit 92% of the budget (so the LR schedule ends inside it), within [min, max]."""
    return max(min_iterations, min(max_iterations, int(0.92 * budget_s / per_it)))


def summary(results: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Each key's value (one seed) or values (several seeds) plus `<key>_mean` / `<key>_std`; keys a run
    did not report are left out."""
    out: dict[str, Any] = {}
    for key in keys:
        if any(key not in r for r in results):
            continue
        values = [round(r[key], 4) if isinstance(r[key], float) else r[key] for r in results]
        out[key] = values[0] if len(values) == 1 else values
        if len(values) > 1:
            out[f"{key}_mean"] = round(statistics.mean(values), 4)
            out[f"{key}_std"] = round(statistics.stdev(values), 4)
    return out


TEACHER_TIME_KEYS = ("teacher_actors", "teacher_cpus", "teacher_put_s_per_it", "teacher_wait_s_per_it",
                     "teacher_compute_s_per_it")


def ray_pool(paths: list[str], teacher_cpus: float, teacher_actors: int) -> Any:
    """The teachers in Ray actors on a local 2-CPU Ray (started here)."""
    import ray
    from cdkd.config import DistributedConfig, TeacherSpec
    from cdkd.distributed.teacher_actors import RayTeacherPool
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return RayTeacherPool([TeacherSpec(path=os.path.abspath(q)) for q in paths],
                          DistributedConfig(teacher_pool="ray", teacher_cpus=teacher_cpus,
                                            teacher_actors=teacher_actors))


def teacher_time(pool: Any, result: dict[str, Any], teacher_cpus: float) -> dict[str, Any]:
    """Seconds per iteration spent serialising inputs, waiting on actors, and computing inside the slowest actor."""
    if pool is None:
        return {}
    n = max(result["iterations"], 1)
    return {"teacher_actors": len(pool.actors), "teacher_cpus": teacher_cpus,
            **{f"teacher_{k}_per_it": round(v / n, 4) for k, v in pool.stats.items()}}


def overlap(config: Callable[[str], Any], data: Any, paths: list[str]) -> dict[str, Any]:
    """Does putting the teachers in an actor pay when it has a CPU of its own? The engine gets 1 thread in this
    process both times; the teachers run inside it ("local_1t"), or all in one actor with 1 CPU and 1 thread
    ("ray_split"), so the student steps while the actor computes the next batches' targets. `config(sub)`: the
    run's config in sub-directory `sub`; both runs make the same iterations from the same seed."""
    import torch
    from cdkd.trainer import build, train
    torch.set_num_threads(1)
    local = build(config("local_1t"))
    local.data = data
    res_local = train(local)
    cpus = 1.0
    pool = ray_pool(paths, cpus, 1)
    try:
        split = build(config("ray_split"), pool=pool)
        split.data = data
        pool.stats = dict.fromkeys(pool.stats, 0)
        res_split = train(split)
    finally:
        pool.shutdown()
    speed = {name: r["iterations"] / r["distill_wall_s"] for name, r in (("local_1t", res_local),
                                                                        ("ray_split", res_split))}
    return {"iterations": res_local["iterations"],
            "it_per_s_local_1t": round(speed["local_1t"], 3), "it_per_s_ray_split": round(speed["ray_split"], 3),
            "speedup": round(speed["ray_split"] / speed["local_1t"], 3),
            "student_acc_local_1t": round(res_local["student_acc"], 4),
            "student_acc_ray_split": round(res_split["student_acc"], 4),
            "probe_agreement_local_1t": round(res_local["probe_agreement"], 4),
            "probe_agreement_ray_split": round(res_split["probe_agreement"], 4),
            **teacher_time(pool, res_split, cpus)}
