"""Seconds per iteration (5 student steps + 1 generator step) of a trained run's late state, under conditions.

    python bench/step_time.py --checkpoint runs/bench/<run>/run/checkpoints/last.pt [--no-flush-denormal] [--competitor]

Answers: does the loop slow down from denormal floats (flush-to-zero off) or from another process on the
cores? Prints one JSON line per condition.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from cdkd.checkpoint import load_run_checkpoint  # noqa: E402
from cdkd.config import make_config  # noqa: E402
from cdkd.trainer import build  # noqa: E402

COMPETITOR = "import torch\na = torch.randn(1500, 1500)\nwhile True:\n    a @ a"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--no-flush-denormal", action="store_true")
    p.add_argument("--competitor", action="store_true", help="run a 2-thread matmul loop in another process")
    p.add_argument("--amp", default="", help="override train.amp (bf16 | none)")
    args = p.parse_args()
    state = load_run_checkpoint(args.checkpoint)
    cfg_dict = {k: v for k, v in state["config"].items() if k != "run_dir"}
    cfg = make_config(cfg_dict, [f"--train.amp={args.amp}"] if args.amp else [])
    run = build(cfg, with_data=False)
    run.distiller.load_state(state["engine"])
    torch.set_flush_denormal(not args.no_flush_denormal)  # build() turns it on
    d = run.distiller
    subnormal = sum(((p.abs() < torch.finfo(p.dtype).tiny) & (p != 0)).sum().item()
                    for p in d.parameters() if p.is_floating_point())
    proc = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if args.competitor else None
    try:
        d.train_iteration()
        t0 = time.perf_counter()
        for _ in range(args.iterations):
            d.train_iteration()
        per_it = (time.perf_counter() - t0) / args.iterations
    finally:
        if proc:
            proc.kill()
    print(json.dumps({"bench": "step_time", "flush_denormal": not args.no_flush_denormal,
                      "competitor": args.competitor, "amp": cfg.train.amp, "s_per_iteration": round(per_it, 3),
                      "subnormal_params": subnormal, "batch_size": cfg.train.batch_size,
                      "checkpoint_step": state["engine"]["step"]}), flush=True)


if __name__ == "__main__":
    main()
