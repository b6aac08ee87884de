"""CIFAR benchmark: 3 teachers (seeds 0, 1, 2; trained once and cached) -> data-free multi-header student.

    python bench/cifar.py --dataset cifar10 --method cdfkd_mfs --budget-s 3600
    python bench/cifar.py --teachers-dir runs/bench/teachers --seeds 0 1 2        # 3 distillation seeds
    python bench/cifar.py --overlap --overlap-iterations 40   # teachers local vs in a 1-CPU actor, 1 thread each

Teachers: `--arch` (WRN-16-2) trained with the CIFAR recipe of `cdkd/demo.py` into `--teachers-dir`, or reused
from there (any cdkd checkpoints named `<dataset>-<arch>-seed<k>.pt` of the same recipe). Student: `--student`
(mfs_wrn_16_1, <= 1/8 of the ensemble's parameters). Each distillation seed gets the whole `--budget-s`: the
iteration count is calibrated from a few timed iterations so the LR schedule fits the budget, and the run stops
hard at it. The line reports test accuracy at the end and, for reporting only, a `curve` of test accuracy at
a few points along the run (nothing is chosen on it). With several seeds, each value is listed and `*_mean` /
`*_std` summarise them. The probe-set build is timed apart (`probe_build_s`), outside `distill_wall_s`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import calibrated_iterations, overlap, seconds_per_iteration, summary  # noqa: E402
from cdkd.config import METHODS, PRESETS, Config, make_config  # noqa: E402
from cdkd.data import load_data  # noqa: E402
from cdkd.demo import ensure_teachers  # noqa: E402
from cdkd.metrics import read_metrics  # noqa: E402
from cdkd.trainer import build, train  # noqa: E402

WARMUP = 2
# The CIFAR distillation settings of this bench (the paper's B = 256 does not fit an hour on 2 cores).
# Student SGD without momentum (the paper: 0.9). With momentum 0.9 (any lr in 0.02-0.1, warm-up or not, batch 64
# or 256, KL or L1, w_feat 0 or 0.2) the BN of each header's last SepConv encoder (the single-encoder mfs_wrn_16_1)
# is driven to beta ~ -0.5 during the generator's first adversarial loss spike (iterations 3-6) and its ReLU dies:
# 0.03 of its outputs positive, frozen there, the student a constant (val_acc 0.10, probe_agreement 0.15).
# With momentum 0 the encoder stays alive (0.49 positive after 120 iterations) and val_acc (1000 training-split
# samples) rises to 0.156; momentum 0.5 keeps it alive but reaches 0.126. Chosen on val_acc (session note, stop 15).
# The paper's own student does not die this way (bench/encoder_health.py, 3 x WRN-16-2, B 64, fp32, w_feat 0,
# momentum 0.9, 30 iterations; bench/README.md "Why no momentum"): cdkd's mfs_resnet18 dips to 0.23-0.34 of the last
# encoder's outputs positive and ends at 0.43-0.55; the official CDFKD_MFS.py loop with its mhresnet8x18 on the same
# teachers dips to 0.05-0.12 and ends at 0.28-0.31. Same drift in both codes, so no cdkd-only cause was found.
CIFAR_DISTILL = {
    "model": {"nz": 256, "ngf": 64},
    "optim": {"momentum": 0.0},
    "train": {"batch_size": 64, "student_steps": 5, "amp_scope": "auto", "log_every": 20, "ckpt_every": 100, "sample_every": 500},
    "probe": {"samples": 512, "steps": 100, "snapshots": 4, "batch_size": 64},
}


def bench_settings(method: str) -> dict:
    """CIFAR_DISTILL without the keys that `method`'s preset sets: a preset named after a paper keeps its own
    loop settings (MAD: batch 128, 10 student steps per generator step, nz 100), the bench fills in the rest."""
    preset = PRESETS[method]
    return {section: {k: v for k, v in values.items() if k not in preset.get(section, {})}
            for section, values in CIFAR_DISTILL.items()}


def run_config(base: dict, overrides: list[str], iterations: int, seed: int, run_dir: str, *extra: str) -> Config:
    """The bench settings + the user's overrides, for `iterations` from `seed` in `run_dir`."""
    return make_config(base, [*overrides, f"--train.iterations={iterations}", f"--train.seed={seed}",
                              f"--run_dir={run_dir}", *extra])


def distill(args, base: dict, overrides: list[str], seed: int, run_dir: str) -> dict:
    def config(iterations: int, sub: str, extra: tuple[str, ...] = ()) -> Config:
        return run_config(base, overrides, iterations, seed, f"{run_dir}/{sub}", *extra)

    calib = build(config(args.max_iterations, "calibration", ("--probe.samples=0",)), with_data=False)
    per_it = seconds_per_iteration(calib.distiller, WARMUP)
    iterations = calibrated_iterations(per_it, args.budget_s, args.max_iterations, args.curve_points)
    eval_every = max(1, iterations // args.curve_points)
    run = build(config(iterations, "run", (f"--train.budget_s={args.budget_s}", f"--train.eval_every={eval_every}")))
    result = train(run)
    result["images_per_it"] = run.cfg.train.batch_size * (run.cfg.train.student_steps + 1)
    metrics = read_metrics(os.path.join(run.cfg.run_dir, "metrics")).to_pylist()
    result["curve"] = [[int(r["iteration"]), round(r["student_acc"], 4)] for r in metrics
                       if r.get("student_acc") is not None]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    p.add_argument("--method", default="cdfkd_mfs", choices=METHODS)
    p.add_argument("--budget-s", type=float, default=3600.0, help="distillation wall-clock budget per seed")
    p.add_argument("--max-iterations", type=int, default=100000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="distillation seeds")
    p.add_argument("--teacher-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arch", default="wrn_16_2", help="teacher architecture")
    p.add_argument("--student", default="mfs_wrn_16_1")
    p.add_argument("--teachers-dir", default="runs/bench/teachers", help="cached teachers (trained there if absent)")
    p.add_argument("--teacher-epochs", type=int, default=0, help="teacher recipe epochs (0 = the recipe's)")
    p.add_argument("--data-dir", default="")
    p.add_argument("--curve-points", type=int, default=4)
    p.add_argument("--overlap", action="store_true",
                   help="same run twice, 1 thread each: teachers local vs all teachers in one 1-CPU actor")
    p.add_argument("--overlap-iterations", type=int, default=40)
    args, overrides = p.parse_known_args()
    data = load_data(args.dataset, args.data_dir)
    paths = ensure_teachers(data, args.dataset, args.arch, args.teacher_seeds, args.teachers_dir,
                            args.teacher_epochs or None)
    settings = bench_settings(args.method)
    base = {**settings, "method": args.method, "teachers": [{"path": q} for q in paths],
            "data": {"name": args.dataset, "root": args.data_dir},
            "model": {**settings["model"], "student": args.student}}
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_dir = os.path.join("runs", "bench", f"{args.dataset}-{args.method}-{stamp}")
    if args.overlap:
        shared = {**base, "probe": {**settings["probe"], "path": f"{run_dir}/probe.pt"}}  # one probe set
        line = overlap(lambda sub: run_config(shared, overrides, args.overlap_iterations, args.seeds[0],
                                              f"{run_dir}/{sub}"), data, paths)
        print(json.dumps({"bench": "cifar_overlap", "dataset": args.dataset, "method": args.method, **line}), flush=True)
        return
    results = [distill(args, base, overrides, seed, f"{run_dir}/seed{seed}") for seed in args.seeds]
    r0 = results[0]
    for r in results:  # images_per_s: synthetic images the generator made (student batches + generator batch)
        r["it_per_s"] = round(r["iterations"] / r["distill_wall_s"], 3)
        r["images_per_s"] = round(r["it_per_s"] * r["images_per_it"], 1)
    line = {"bench": "cifar", "dataset": args.dataset, "method": args.method, "seeds": args.seeds,
            "teacher_acc": [round(a, 4) for a in r0["teacher_acc"]], "ensemble_acc": round(r0["ensemble_acc"], 4),
            **summary(results, ("student_acc", "val_acc", "probe_agreement", "distill_wall_s", "probe_build_s", "iterations",
                                "it_per_s", "images_per_s")),
            "student_params": r0["student_params"], "teacher_params": r0["teacher_params"],
            "param_ratio": round(r0["student_params"] / r0["teacher_params"], 4),
            "curve": [r["curve"] for r in results] if len(results) > 1 else r0["curve"],
            "budget_s": args.budget_s, "student": args.student, "teacher_arch": args.arch, "run_dir": run_dir}
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
