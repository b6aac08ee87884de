"""Data-free distillation of a teacher ensemble into a multi-header student (CDFKD-MFS and presets).

A Ray job: it joins the cluster in RAY_ADDRESS (`ray job submit` sets it) or starts a local one, and trains
with Ray Train workers (`distributed.workers`, DDP) and teachers in each worker or in Ray actors
(`distributed.teacher_pool=ray`). `--distributed.workers=0` runs the engine in this process (no Ray needed
unless the teachers are Ray actors). `jobs/cdfkd_mfs.py` is the same command, for `ray job submit`.

    cdkd distill                                          # the MNIST demo (trains or reuses 3 LeNet-5 teachers)
    cdkd distill --config jobs/configs/mnist.yaml --train.iterations=500 --method=mad
    cdkd distill --config FILE --run_dir=runs/x --resume
    cdkd distill --config FILE --print-config             # the resolved config as YAML; nothing is trained
    ray job submit --working-dir . -- python jobs/cdfkd_mfs.py --config FILE --distributed.teacher_pool=ray
"""
from __future__ import annotations

import importlib.util
import json

from ..cli import add_config_args, parse, run_config
from ..config import METHODS, Config
from ..errors import CdkdError
from ..resume import resume_mode
from .base import Parser, guarded
from .keys import first_sentence, format_keys, method_descriptions


def distill(cfg: Config, resume: bool) -> dict:
    """In this process (workers=0) or through Ray Train; teachers local or in Ray actors."""
    from ..trainer import build, has_checkpoint, train
    dc = cfg.distributed
    if resume and not has_checkpoint(cfg.run_dir):
        raise CdkdError(f"--resume: no checkpoint in {cfg.run_dir or 'run_dir (not set)'} (neither checkpoints/last.pt "
                        "nor checkpoint_*); nothing to resume. Check --run_dir, or drop --resume to start anew")
    if dc.workers == 0 and dc.teacher_pool == "local":
        return train(build(cfg), resume=resume)
    if importlib.util.find_spec("ray") is None:  # (the training loop itself never needs ray)
        raise CdkdError("ray is not installed: pip install 'ray[default,train,tune]', or run in this process "
                        "with --distributed.workers=0 --distributed.teacher_pool=local")
    from ..distributed.job import run_on_ray
    return run_on_ray(cfg, resume=resume, threads=max(1, int(dc.cpus_per_worker)))


def list_models() -> str:
    """Registered model names, each with the first sentence of its factory's docstring."""
    from ..models import list_models as names
    from ..registry import MODELS
    return "\n".join(f"{n:<24}{first_sentence(MODELS.get(n).__doc__ or '')}".rstrip() for n in names())


def list_methods() -> str:
    return "\n".join(f"{m:<12}{text}" for m, text in method_descriptions().items())


def report(cfg: Config, result: dict) -> str:
    """The table, where everything went, and one `RESULT {json}` line (what scripts parse)."""
    from ..trainer import format_table
    rd = cfg.run_dir
    ckpt = result.get("ray_checkpoint") or f"{rd}/checkpoints/last.pt"
    onnx = f"\n  exported onnx: {result['exported_onnx']}" if result.get("exported_onnx") else ""
    return (f"{format_table(result)}\nrun directory: {rd}\n  checkpoint: {ckpt}\n  metrics: {rd}/metrics/*.parquet "
            f"(TensorBoard: {rd}/metrics/tensorboard)\n  samples: {rd}/samples/\n  exported student: "
            f"{result['exported_student']}{onnx}\n  result: {rd}/result.json\nRESULT {json.dumps(result)}")


def parser(prog: str = "cdkd distill") -> Parser:
    p = Parser(prog, __doc__, epilog=format_keys())
    add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run in run_dir from its last checkpoint")
    p.add_argument("--resume-allow-gaps", action="store_true", help="(implies --resume) continue even if the "
                   "metrics miss or repeat iterations before the checkpoint; the gap is recorded in resumes.jsonl")
    p.add_argument("--resume-from-good", action="store_true", help="(implies --resume) if the newest checkpoint "
                   "cannot be read, continue from the older good one (checkpoints/prev.pt)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML and exit (trains nothing, not even the demo's teachers)")
    p.add_argument("--list-models", action="store_true", help="the registered models (students, teachers, generators)")
    p.add_argument("--list-methods", action="store_true", help=f"the methods ({', '.join(METHODS)}) and their presets")
    return p


def main(argv: list[str] | None = None, prog: str = "cdkd distill") -> int:
    args, overrides = parse(parser(prog), argv)

    def work() -> int:
        if args.list_models or args.list_methods:
            print(list_models() if args.list_models else list_methods())
            return 0
        cfg = run_config(args, overrides, train_demo=not args.print_config)
        if args.print_config:
            print(cfg.to_yaml(), end="")
            return 0
        print(report(cfg, distill(cfg, resume_mode(args))))
        return 0
    return guarded(work)
