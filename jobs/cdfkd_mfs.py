"""Data-free distillation of a teacher ensemble into a multi-header student (CDFKD-MFS and presets).

A Ray job: it joins the cluster in RAY_ADDRESS (`ray job submit` sets it) or starts a local one, and trains
with Ray Train workers (`distributed.workers`, DDP) and teachers in each worker or in Ray actors
(`distributed.teacher_pool=ray`). `--distributed.workers=0` runs the engine in this process (no Ray needed
unless the teachers are Ray actors).

    python jobs/cdfkd_mfs.py                              # the MNIST demo (trains or reuses 3 LeNet-5 teachers)
    python jobs/cdfkd_mfs.py --config jobs/configs/mnist.yaml --train.iterations=500 --method=mad
    python jobs/cdfkd_mfs.py --config FILE --run_dir=runs/x --resume
    ray job submit --working-dir . -- python jobs/cdfkd_mfs.py --config FILE --distributed.teacher_pool=ray
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cdkd.cli import add_config_args, parse, run_config  # noqa: E402
from cdkd.config import Config  # noqa: E402
from cdkd.errors import CdkdError  # noqa: E402
from cdkd.interrupt import Interrupted  # noqa: E402
from cdkd.resume import resume_mode  # noqa: E402
from cdkd.trainer import build, format_table, has_checkpoint, train  # noqa: E402


def distill(cfg: Config, resume: bool) -> dict:
    """In this process (workers=0) or through Ray Train; teachers local or in Ray actors."""
    dc = cfg.distributed
    if resume and not has_checkpoint(cfg.run_dir):
        raise CdkdError(f"--resume: no checkpoint in {cfg.run_dir or 'run_dir (not set)'} (neither checkpoints/last.pt "
                        "nor checkpoint_*); nothing to resume. Check --run_dir, or drop --resume to start anew")
    if dc.workers == 0 and dc.teacher_pool == "local":
        return train(build(cfg), resume=resume)
    try:
        import ray  # noqa: F401
    except ImportError:
        raise CdkdError("ray is not installed: pip install 'ray[default,train,tune]', or run in this process "
                        "with --distributed.workers=0 --distributed.teacher_pool=local") from None
    from cdkd.distributed.job import run_on_ray
    return run_on_ray(cfg, resume=resume, threads=max(1, int(dc.cpus_per_worker)))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run in run_dir from its last checkpoint")
    p.add_argument("--resume-allow-gaps", action="store_true", help="(implies --resume) continue even if the "
                   "metrics miss or repeat iterations before the checkpoint; the gap is recorded in resumes.jsonl")
    p.add_argument("--resume-from-good", action="store_true", help="(implies --resume) if the newest checkpoint "
                   "cannot be read, continue from the older good one (checkpoints/prev.pt)")
    args, overrides = parse(p, argv)
    try:
        cfg = run_config(args, overrides)
        result = distill(cfg, resume_mode(args))
    except (Interrupted, KeyboardInterrupt) as e:  # Ctrl-C / SIGTERM: checkpointed (or, twice, stopped at once)
        print(f"interrupted: {str(e) or 'KeyboardInterrupt before the run started'}", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except CdkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    rd = cfg.run_dir
    ckpt = result.get("ray_checkpoint") or f"{rd}/checkpoints/last.pt"
    print(f"run directory: {rd}\n  checkpoint: {ckpt}\n  metrics: {rd}/metrics/*.parquet (TensorBoard: "
          f"{rd}/metrics/tensorboard)\n  samples: {rd}/samples/\n  exported student: {result['exported_student']}\n"
          f"  result: {rd}/result.json")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
