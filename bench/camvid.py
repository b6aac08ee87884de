"""DDAD on CamVid segmentation: K LR-ASPP/MobileNetV3-Large teachers trained on CamVid (cached by path), distilled
data-free into a multi-header LR-ASPP/MobileNetV3-Small x0.75 student within a wall-clock budget; the test split
only reports. One JSON line.

    python bench/camvid.py --budget-s 3600                 # DDAD's setting: one teacher
    python bench/camvid.py --budget-s 3600 --teachers 3    # several teachers -> a 3-header student

Working size 120x160 (`--size`), mIoU over the 11 classes (void ignored) on the test split at the files' size.
Extra `--section.key=value` arguments override the distillation config (jobs/configs/camvid_ddad.yaml).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import calibrated_iterations, seconds_per_iteration  # noqa: E402
from cdkd.config import load_config  # noqa: E402
from cdkd.data import load_data  # noqa: E402
from cdkd.demo import ensure_teachers  # noqa: E402
from cdkd.teacher_pool import cpuinfo  # noqa: E402
from cdkd.teachers import load_cdkd  # noqa: E402
from cdkd.trainer import build, train  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jobs", "configs",
                      "camvid_ddad.yaml")


def cpu_name() -> str:
    name = cpuinfo("model name")
    if not name:
        return platform.processor()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return f"{name}{' (AMX)' if amx else ''}, {os.cpu_count()} cores"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=3600.0, help="distillation wall-clock budget")
    p.add_argument("--teachers", type=int, default=1, help="K teachers (seeds 0..K-1) -> a K-header student")
    p.add_argument("--size", type=int, nargs=2, default=[120, 160], metavar=("H", "W"))
    p.add_argument("--epochs", type=int, default=0, help="teacher epochs (0 = the CamVid recipe, cdkd/demo.py)")
    p.add_argument("--max-iterations", type=int, default=100000)
    p.add_argument("--data-dir", default="")
    p.add_argument("--teacher-dir", default="runs/bench/camvid/teachers")
    p.add_argument("--seed", type=int, default=0)
    args, overrides = p.parse_known_args()
    torch.set_flush_denormal(True)
    data = load_data("camvid", args.data_dir, size=tuple(args.size))
    paths = ensure_teachers(data, "camvid", "lraspp_mbv3_large", list(range(args.teachers)), args.teacher_dir,
                            args.epochs or None)
    teacher_miou = [load_cdkd(q)[2]["test_miou"] for q in paths]
    run_dir = os.path.join("runs", "bench", "camvid", f"ddad-k{args.teachers}-{time.strftime('%Y%m%d-%H%M%S')}")
    common = [f"--teachers={json.dumps([{'path': q} for q in paths])}", f"--train.seed={args.seed}",
              f"--data.root={args.data_dir}", f"--train.budget_s={args.budget_s}", *overrides]

    def config(iterations: int, sub: str):
        return load_config(CONFIG, [*common, f"--train.iterations={iterations}", f"--run_dir={run_dir}/{sub}"])

    calib = build(config(1, "calibrate"))
    per_it = seconds_per_iteration(calib.distiller, 3)
    del calib
    iterations = calibrated_iterations(per_it, args.budget_s, args.max_iterations)
    print(f"[bench] {per_it:.2f} s/iteration -> {iterations} iterations in {args.budget_s:.0f} s")
    result = train(build(config(iterations, "run")))
    line = {"bench": "camvid_ddad", "teachers": args.teachers, "size": args.size,
            "teachers_miou": [round(v, 4) for v in teacher_miou],
            **({"ensemble_miou": round(result["ensemble_miou"], 4)} if args.teachers > 1 else {}),
            "student_miou": round(result["student_miou"], 4),
            "student_over_teacher": round(result["student_miou"] / (sum(teacher_miou) / len(teacher_miou)), 4),
            "student_params": result["student_params"], "teacher_params": result["teacher_params"],
            "distill_wall_s": result["distill_wall_s"], "iterations": result["iterations"],
            "s_per_iteration": round(per_it, 3), "probe_agreement": round(result["probe_agreement"], 4),
            "val_miou": round(result.get("val_miou", float("nan")), 4), "student_iou": result["student_iou"],
            "budget_s": args.budget_s, "seed": args.seed, "cpu": cpu_name(), "run_dir": run_dir}
    print(json.dumps(line))


if __name__ == "__main__":
    main()
