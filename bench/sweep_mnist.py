"""Sweep benchmark: does the data-free metric pick what test accuracy would have picked? One JSON line.

    python bench/sweep_mnist.py                       # 12 trials x 240 iterations, 2 at a time (~25 min, 2 cores)

3 LeNet-5 MNIST teachers (as bench/mnist.py) -> mfs_lenet5_half, the cdfkd_mfs default search space (its loss
weights over 1/10x..10x), FIFO scheduling so every trial trains equally long. The line reports the Spearman
rank correlation between the selection metric and the test accuracy over the trials, the test accuracy of
the trial the metric picks and of the best trial, and the wall time. Test accuracy never enters the
selection; it is measured afterwards from each trial's last checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cdkd.config import make_config  # noqa: E402
from cdkd.data import load_data  # noqa: E402
from cdkd.demo import MNIST_DEMO, ensure_teachers  # noqa: E402
from cdkd.search_space import default_space  # noqa: E402


def ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions)."""
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v), dtype=float)
    for value in np.unique(v):
        tied = v == value
        r[tied] = r[tied].mean()
    return r


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--iterations", type=int, default=240)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--method", default="cdfkd_mfs")
    p.add_argument("--data-dir", default="")
    p.add_argument("--teacher-dir", default="runs/bench/teachers")
    p.add_argument("--sweep-dir", default="")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import ray
    from cdkd.distributed.sweep import SweepSettings, format_sweep_table, run_sweep
    data = load_data("mnist", args.data_dir)
    paths = ensure_teachers(data, "mnist", "lenet5", [0, 1, 2], args.teacher_dir)
    base = make_config({**MNIST_DEMO, "method": args.method, "teachers": [{"path": q} for q in paths],
                        "data": {"name": "mnist", "root": args.data_dir},
                        "train": {**MNIST_DEMO["train"], "iterations": args.iterations, "ckpt_every": 40,
                                  "sample_every": args.iterations, "seed": args.seed},
                        "distributed": {"workers": 0, "cpus_per_worker": 1.0}}).to_dict()
    sweep_dir = args.sweep_dir or os.path.join("runs", "bench", f"sweep-{args.method}-{time.strftime('%Y%m%d-%H%M%S')}")
    settings = SweepSettings(sweep_dir, base, default_space(args.method), num_samples=args.trials, scheduler="fifo",
                             metric="probe_agreement", max_concurrent=args.concurrent, seed=args.seed)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    out = run_sweep(settings)
    wall = time.perf_counter() - t0
    rows = [r for r in out["rows"] if r.get("test_acc") is not None and r["status"] == "done"]
    print(format_sweep_table(out["rows"], settings.metric, out["best"]["trial"]), file=sys.stderr)
    test = [r["test_acc"] for r in rows]
    best_test = max(test)
    picked = out["best"]["test_acc"]
    print(json.dumps({"bench": "sweep_mnist", "method": args.method, "trials": len(rows), "iterations": args.iterations,
                      "metric": settings.metric,
                      "spearman": round(spearman([r["probe_agreement"] for r in rows], test), 4),
                      "spearman_probe_tv": round(-spearman([r["probe_tv"] for r in rows], test), 4),
                      "picked_test_acc": round(picked, 4), "best_test_acc": round(best_test, 4),
                      "picked_gap_points": round(100 * (best_test - picked), 2),
                      "test_acc_range": [round(min(test), 4), round(best_test, 4)],
                      "wall_s": round(wall, 1), "sweep_dir": sweep_dir}), flush=True)


if __name__ == "__main__":
    main()
