"""Do the headers' last encoders stay alive? The CIFAR momentum question (issue 21, item 3).

    python bench/encoder_health.py --student mfs_resnet18 --iterations 12 --optim.momentum=0.9
    python bench/encoder_health.py --student mfs_wrn_16_1 --iterations 12 --optim.momentum=0.0

Runs the first iterations of the CIFAR bench's distillation (`bench/cifar.py`'s settings, its cached teachers)
and prints, after every iteration, one JSON line with each header's last encoder: the fraction of its ReLU
outputs that are positive (`alive`, in the iteration's last student forward: on the DFAD loop, the generator
step's batch) and the mean beta of the BN before that ReLU. A dead encoder reads alive ~0.03 for good, and the
student becomes a constant. The last line summarises the run. Any `--section.key=value` config override
applies; the default here is fp32 (`--train.amp=none`), the official code's precision.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cifar import bench_settings  # noqa: E402
from cdkd.config import METHODS, make_config  # noqa: E402
from cdkd.demo import teacher_path  # noqa: E402
from cdkd.trainer import build  # noqa: E402


def last_encoders(student: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """(BN, ReLU) at the end of each header's last encoder."""
    return [(h.encoders[-1].body[-2], h.encoders[-1].body[-1]) for h in student.headers]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    p.add_argument("--method", default="cdfkd_mfs", choices=METHODS)
    p.add_argument("--student", default="mfs_resnet18")
    p.add_argument("--arch", default="wrn_16_2", help="teacher architecture (cached in --teachers-dir)")
    p.add_argument("--teachers-dir", default="runs/bench/teachers")
    p.add_argument("--teacher-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=12)
    args, overrides = p.parse_known_args()
    paths = [teacher_path(args.teachers_dir, args.dataset, args.arch, s) for s in args.teacher_seeds]
    missing = [q for q in paths if not os.path.exists(q)]
    if missing:
        sys.exit(f"[cdkd] no cached teacher {missing[0]}: train them first (bench/cifar.py or jobs/train_teachers.py)")
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    settings = bench_settings(args.method)
    base = {**settings, "method": args.method, "teachers": [{"path": q} for q in paths],
            "model": {**settings["model"], "student": args.student},
            "train": {**settings["train"], "amp": "none"}, "probe": {"samples": 0}}
    cfg = make_config(base, ["--train.iterations=1000", f"--run_dir=runs/bench/encoder-health-{stamp}", *overrides])
    run = build(cfg, with_data=False)
    d = run.distiller
    encoders = last_encoders(d.student)
    alive: list[float] = [0.0] * len(encoders)

    def recorder(k: int):
        def hook(_m, _i, out: torch.Tensor) -> None:
            alive[k] = float((out > 0).float().mean())
        return hook

    for k, (_, relu) in enumerate(encoders):
        relu.register_forward_hook(recorder(k))
    history = []
    for it in range(1, args.iterations + 1):
        t0 = time.perf_counter()
        logs = d.train_iteration()
        betas = [round(float(bn.bias.mean()), 4) for bn, _ in encoders]
        line = {"bench": "encoder_health", "iteration": it, "alive": [round(a, 4) for a in alive],
                "beta_mean": betas, "loss_s": round(logs["loss_s"], 4), "loss_g": round(logs["loss_g"], 4),
                "s": round(time.perf_counter() - t0, 2)}
        history.append(line)
        print(json.dumps(line), flush=True)
    print(json.dumps({"bench": "encoder_health", "student": args.student, "method": args.method,
                      "momentum": cfg.optim.momentum, "student_lr": cfg.optim.student_lr,
                      "batch_size": cfg.train.batch_size, "amp": cfg.train.amp, "iterations": args.iterations,
                      "alive_last": history[-1]["alive"], "alive_min": [min(h["alive"][k] for h in history)
                                                                      for k in range(len(encoders))],
                      "teachers": paths, "overrides": overrides}), flush=True)


if __name__ == "__main__":
    main()
