"""MNIST benchmark: 3 LeNet-5 teachers (seeds 0, 1, 2) -> data-free multi-header student; one JSON line.

    python bench/mnist.py --method cdfkd_mfs --budget-s 600
    python bench/mnist.py --teachers ray      # the teachers in Ray actors (one per teacher), engine here

With `--teachers ray` the engine (1 train worker) runs in this process and the line adds where the
teacher time went: serialisation (`ray.put`), waiting on results, and the actors' own compute.

The iteration count is calibrated from the measured speed of a few warm-up iterations so that the run
(and its cosine schedule) fits the budget; the run also stops hard at the budget.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cdkd.config import METHODS, make_config  # noqa: E402
from cdkd.data import load_data  # noqa: E402
from cdkd.demo import MNIST_DEMO, ensure_teachers  # noqa: E402
from cdkd.trainer import build, train  # noqa: E402

WARMUP = 4


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--method", default="cdfkd_mfs", choices=METHODS)
    p.add_argument("--budget-s", type=float, default=600.0, help="distillation wall-clock budget")
    p.add_argument("--max-iterations", type=int, default=600)
    p.add_argument("--data-dir", default="")
    p.add_argument("--teacher-dir", default="runs/bench/teachers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teachers", choices=("local", "ray"), default="local", help="in-process teachers or Ray actors")
    p.add_argument("--teacher-cpus", type=float, default=0.5, help="CPU share per teacher actor (--teachers ray)")
    p.add_argument("--teacher-actors", type=int, default=0, help="actors for the 3 teachers (0 = one per teacher)")
    args, overrides = p.parse_known_args()
    data = load_data("mnist", args.data_dir)
    paths = ensure_teachers(data, "mnist", "lenet5", [0, 1, 2], args.teacher_dir)
    base = {**MNIST_DEMO, "method": args.method, "teachers": [{"path": q} for q in paths],
            "data": {"name": "mnist", "root": args.data_dir}}
    run_dir = os.path.join("runs", "bench", f"mnist-{args.method}-{args.teachers}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")

    def config(iterations: int, sub: str):
        return make_config(base, [*overrides, f"--train.iterations={iterations}", f"--train.seed={args.seed}",
                                  f"--train.budget_s={args.budget_s}", f"--run_dir={run_dir}/{sub}"])

    pool = None
    if args.teachers == "ray":
        import ray
        from cdkd.config import DistributedConfig, TeacherSpec
        from cdkd.distributed.teacher_actors import RayTeacherPool
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        pool = RayTeacherPool([TeacherSpec(path=os.path.abspath(q)) for q in paths],
                              DistributedConfig(teacher_pool="ray", teacher_cpus=args.teacher_cpus,
                                                teacher_actors=args.teacher_actors))
    probe = build(config(args.max_iterations, "calibration"), pool=pool)
    probe.distiller.train_iteration()
    t0 = time.perf_counter()
    for _ in range(WARMUP):
        probe.distiller.train_iteration()
    per_it = (time.perf_counter() - t0) / WARMUP
    iterations = max(1, min(args.max_iterations, int(0.92 * args.budget_s / per_it)))
    run = build(config(iterations, "run"), pool=pool)
    run.data = data
    if pool is not None:
        pool.stats = dict.fromkeys(pool.stats, 0)
    result = train(run)
    ratio = result["student_params"] / result["teacher_params"]
    print(json.dumps({"bench": "mnist", "method": args.method, "teacher_acc": [round(a, 4) for a in result["teacher_acc"]],
                      "ensemble_acc": round(result["ensemble_acc"], 4), "student_acc": round(result["student_acc"], 4),
                      "student_acc_attention": round(result.get("student_acc_attention", float("nan")), 4),
                      "student_params": result["student_params"], "teacher_params": result["teacher_params"],
                      "param_ratio": round(ratio, 4), "distill_wall_s": result["distill_wall_s"],
                      "iterations": result["iterations"], "s_per_iteration": round(result["distill_wall_s"] /
                                                                                  max(result["iterations"], 1), 3),
                      "it_per_s": round(result["iterations"] / result["distill_wall_s"], 3),
                      "teachers": args.teachers, **teacher_time(pool, result, args), "run_dir": run_dir}), flush=True)


def teacher_time(pool, result, args) -> dict:
    """Seconds per iteration spent serialising inputs, waiting on actors, and computing inside the slowest actor."""
    if pool is None:
        return {}
    n = max(result["iterations"], 1)
    return {"teacher_actors": len(pool.actors), "teacher_cpus": args.teacher_cpus,
            **{f"teacher_{k}_per_it": round(v / n, 4) for k, v in pool.stats.items()}}


if __name__ == "__main__":
    main()
