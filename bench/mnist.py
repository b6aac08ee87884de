"""MNIST benchmark: 3 LeNet-5 teachers (seeds 0, 1, 2) -> data-free multi-header student; one JSON line.

    python bench/mnist.py --method cdfkd_mfs --budget-s 600
    python bench/mnist.py --method cgdd --seeds 0 1 2   # mean +- std over 3 distillation seeds
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

from bench.common import (TEACHER_TIME_KEYS, calibrated_iterations, overlap, ray_pool,  # noqa: E402
                          seconds_per_iteration, summary, teacher_time)
from cdkd.config import METHODS, make_config  # noqa: E402
from cdkd.data import load_data  # noqa: E402
from cdkd.demo import MNIST_DEMO, ensure_teachers  # noqa: E402
from cdkd.trainer import build, train  # noqa: E402

WARMUP = 4


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--method", default="cdfkd_mfs", choices=METHODS)
    p.add_argument("--budget-s", type=float, default=600.0, help="distillation wall-clock budget per seed")
    p.add_argument("--max-iterations", type=int, default=600)
    p.add_argument("--data-dir", default="")
    p.add_argument("--teacher-dir", default="runs/bench/teachers")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="distillation seeds (mean +- std over them)")
    p.add_argument("--teachers", choices=("local", "ray"), default="local", help="in-process teachers or Ray actors")
    p.add_argument("--teacher-cpus", type=float, default=0.5, help="CPU share per teacher actor (--teachers ray)")
    p.add_argument("--teacher-actors", type=int, default=0, help="actors for the 3 teachers (0 = one per teacher)")
    p.add_argument("--overlap", action="store_true",
                   help="same run twice, 1 thread each: teachers local vs all teachers in one 1-CPU actor")
    p.add_argument("--overlap-iterations", type=int, default=300)
    args, overrides = p.parse_known_args()
    data = load_data("mnist", args.data_dir)
    paths = ensure_teachers(data, "mnist", "lenet5", [0, 1, 2], args.teacher_dir)
    base = {**MNIST_DEMO, "method": args.method, "teachers": [{"path": q} for q in paths],
            "data": {"name": "mnist", "root": args.data_dir}}
    run_dir = os.path.join("runs", "bench", f"mnist-{args.method}-{args.teachers}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")

    def config(iterations: int, seed: int, sub: str):  # every seed is judged on the same probe set
        return make_config(base, [f"--probe.path={run_dir}/probe.pt", *overrides, f"--train.iterations={iterations}",
                                  f"--train.seed={seed}", f"--train.budget_s={args.budget_s}",
                                  f"--run_dir={run_dir}/{sub}"])

    if args.overlap:
        line = overlap(lambda sub: config(args.overlap_iterations, args.seeds[0], sub), data, paths)
        print(json.dumps({"bench": "mnist_overlap", "method": args.method, **line}), flush=True)
        return
    pool = None
    if args.teachers == "ray":
        pool = ray_pool(paths, args.teacher_cpus, args.teacher_actors)
    calib = build(config(args.max_iterations, args.seeds[0], "calibration"), pool=pool)
    iterations = calibrated_iterations(seconds_per_iteration(calib.distiller, WARMUP), args.budget_s,
                                       args.max_iterations)
    results = []
    for seed in args.seeds:  # one calibration for all seeds: each runs the same schedule
        run = build(config(iterations, seed, f"seed{seed}"), pool=pool)
        run.data = data
        if pool is not None:
            pool.stats = dict.fromkeys(pool.stats, 0)
        result = train(run)
        result["it_per_s"] = round(result["iterations"] / result["distill_wall_s"], 3)
        result["s_per_iteration"] = round(result["distill_wall_s"] / max(result["iterations"], 1), 3)
        result.update(teacher_time(pool, result, args.teacher_cpus))
        results.append(result)
    r0 = results[0]
    print(json.dumps({"bench": "mnist", "method": args.method, "seeds": args.seeds,
                      "teacher_acc": [round(a, 4) for a in r0["teacher_acc"]],
                      "ensemble_acc": round(r0["ensemble_acc"], 4),
                      **summary(results, ("student_acc", "student_acc_attention", "val_acc", "probe_agreement",
                                          "distill_wall_s", "probe_build_s", "iterations", "s_per_iteration",
                                          "it_per_s", *TEACHER_TIME_KEYS)),
                      "student_params": r0["student_params"], "teacher_params": r0["teacher_params"],
                      "param_ratio": round(r0["student_params"] / r0["teacher_params"], 4),
                      "teachers": args.teachers, "overrides": overrides, "run_dir": run_dir}), flush=True)


if __name__ == "__main__":
    main()
