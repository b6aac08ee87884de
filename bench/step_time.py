"""Seconds per distillation iteration (student_steps student steps + 1 generator step), under conditions.

    python bench/step_time.py --setting paper-cifar100 --batch-size 64 --iterations 3 [--profile] [--compare]
    python bench/step_time.py --checkpoint runs/bench/<run>/run/checkpoints/last.pt [--no-flush-denormal] [--competitor]

`--setting paper-cifar100` builds the CDFKD-MFS paper setting with random-init teachers (no data needed):
3 x CIFAR ResNet-34 (100 classes) -> `mfs_resnet18`, nz 256, 5 student steps per generator step.
`--compare` times the engine's speed settings before issue 21 ("before", "before_fp32") against today's
defaults with the given `--section.key=value` overrides ("after"), alternating, in one process.
`--profile` adds where the time goes (torch.profiler, by the engine's record_function labels), and the
iteration's floating-point operations against this machine's fp32 convolution speed (the floor of an iteration).
`--checkpoint` times a trained run's late state (denormals, a competing process). One JSON line per result.
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
import torch.nn as nn  # noqa: E402

from cdkd.checkpoint import load_run_checkpoint  # noqa: E402
from cdkd.config import make_config  # noqa: E402
from cdkd.models import create_model  # noqa: E402
from cdkd.teacher_pool import TeacherGroup  # noqa: E402
from cdkd.teachers.base import ClassifierOutputs, Loaded, Teacher  # noqa: E402
from cdkd.trainer import build  # noqa: E402

COMPETITOR = "import torch\na = torch.randn(1500, 1500)\nwhile True:\n    a @ a"
SETTINGS = {
    "paper-cifar100": {"teacher": "resnet34", "num_classes": 100, "num_teachers": 3, "input_shape": (3, 32, 32),
                       "config": {"method": "cdfkd_mfs", "model": {"student": "mfs_resnet18", "nz": 256},
                                  "train": {"student_steps": 5, "amp_scope": "auto"}}},
}
# `--compare`: the engine's speed settings before issue 21 against today's defaults plus the command line's
# overrides ("after"). "before": the default then, bf16 autocast on the channels_last generator, fp32 NCHW student
# and teachers, one teacher forward per student batch; "before_fp32": the same in fp32 (issue 21's `amp: auto` on a
# CPU without AMX, before the layout and batching changes).
BEFORE = {"before": ["--train.amp=bf16", "--train.amp_scope=generator", "--train.batched_targets=false"],
          "before_fp32": ["--train.amp=none", "--train.amp_scope=generator", "--train.batched_targets=false"]}
LABELS = ("generator.sample", "teachers.targets", "student.step", "generator.forward", "student.forward_g",
          "teachers.generator_forward", "student.input_grad", "teachers.generator_backward", "generator.backward")


def nchw_models(distiller) -> None:
    """The layout before issue 21 in fp32: only the generator channels_last, student and teachers NCHW."""
    distiller.channels_last = False
    distiller.student.to(memory_format=torch.contiguous_format)
    distiller.pool_spec.channels_last = False
    distiller.pool.configure(distiller.pool_spec)


def paper_run(setting: str, batch_size: int, overrides: list[str]):
    s = SETTINGS[setting]
    torch.manual_seed(0)
    teachers = [Teacher(Loaded(ClassifierOutputs(create_model(s["teacher"], num_classes=s["num_classes"])),
                               s["input_shape"]), f"{s['teacher']}-{k}", "random") for k in range(s["num_teachers"])]
    cfg = make_config({**s["config"], "teachers": [{"path": "random"}] * s["num_teachers"]},
                      [f"--train.batch_size={batch_size}", "--probe.samples=0", *overrides])
    return build(cfg, with_data=False, pool=TeacherGroup.validated(teachers))


def time_iterations(distiller, n: int) -> float:
    distiller.train_iteration()  # warm-up: allocator, oneDNN primitive caches
    t0 = time.perf_counter()
    for _ in range(n):
        distiller.train_iteration()
    return (time.perf_counter() - t0) / n


def profile(distiller) -> dict[str, float]:
    """Seconds per iteration inside each labelled part of the engine (one profiled iteration)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        distiller.train_iteration()
    totals = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key in LABELS}
    return {k: round(totals.get(k, 0.0), 3) for k in LABELS}


def iteration_tflop(distiller) -> float:
    """Floating-point operations of one iteration (convolutions and matmuls, forward and backward), by torch's
    FLOP formulas (`flop_counter.flop_registry`) on an eager run: with the machine's matmul speed, the floor of
    an iteration. (A plain dispatch mode: FlopCounterMode's module tracker rejects `autograd.grad`.)"""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Count.total += formula(*args, **(kwargs or {}), out_val=out)
            return out

    with Count():
        distiller.train_iteration()
    return Count.total / 1e12


def conv_gflops(repeats: int = 10) -> float:
    """This machine's fp32 convolution speed at the configured threads: a 3 x 3, 256 -> 256 channels_last
    convolution on 64 x 16 x 16 (oneDNN's best case here; a practical peak for the floor of an iteration)."""
    conv = nn.Conv2d(256, 256, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(64, 256, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        conv(x)
        t0 = time.perf_counter()
        for _ in range(repeats):
            conv(x)
        seconds = (time.perf_counter() - t0) / repeats
    return 2 * 64 * 16 * 16 * 256 * 256 * 9 / seconds / 1e9


def setting_main(args, overrides: list[str]) -> None:
    variants = [*BEFORE.items(), ("after", overrides)] if args.compare else [("as_configured", overrides)]
    runs = {name: paper_run(args.setting, args.batch_size, extra) for name, extra in variants}
    for name in BEFORE if args.compare else ():
        nchw_models(runs[name].distiller)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # alternate, so both see the same machine load
        for name, run in runs.items():
            times[name].append(time_iterations(run.distiller, args.iterations))
    for name, run in runs.items():
        t = run.cfg.train
        per_it = min(times[name])
        line = {"bench": "step_time", "setting": args.setting, "variant": name, "batch_size": args.batch_size,
                "s_per_iteration": round(per_it, 3),
                "images_per_s": round(args.batch_size * (t.student_steps + 1) / per_it, 1),
                "amp": t.amp, "amp_scope": t.amp_scope, "channels_last": t.channels_last,
                "models_channels_last": run.distiller.channels_last, "batched_targets": t.batched_targets,
                "compile": t.compile,
                "threads": torch.get_num_threads(), "iterations": args.iterations, "repeats": args.repeats,
                "all_s_per_iteration": [round(v, 3) for v in times[name]]}
        if args.profile:
            line["profile_s"] = profile(run.distiller)
        print(json.dumps(line), flush=True)
    if args.profile:
        eager = next(run for run in runs.values() if run.cfg.train.compile == "none")
        tflop, peak = iteration_tflop(eager.distiller), conv_gflops()
        print(json.dumps({"bench": "step_time", "setting": args.setting, "batch_size": args.batch_size,
                          "tflop_per_iteration": round(tflop, 3), "conv_gflops": round(peak, 1),
                          "floor_s_per_iteration": round(tflop * 1e3 / peak, 2)}), flush=True)
    if args.compare:
        print(json.dumps({"bench": "step_time", "setting": args.setting, "batch_size": args.batch_size,
                          **{f"speedup_over_{b}": round(min(times[b]) / min(times["after"]), 2) for b in BEFORE}}),
              flush=True)


def checkpoint_main(args) -> None:
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
        per_it = time_iterations(d, args.iterations)
    finally:
        if proc:
            proc.kill()
    print(json.dumps({"bench": "step_time", "flush_denormal": not args.no_flush_denormal,
                      "competitor": args.competitor, "amp": cfg.train.amp, "s_per_iteration": round(per_it, 3),
                      "subnormal_params": subnormal, "batch_size": cfg.train.batch_size,
                      "checkpoint_step": state["engine"]["step"]}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", choices=sorted(SETTINGS), help="a built-in setting with random-init teachers")
    p.add_argument("--checkpoint", help="a run checkpoint to time instead")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--repeats", type=int, default=1, help="timed blocks per variant (the fastest is reported)")
    p.add_argument("--compare", action="store_true", help="time 'before' and 'after' speed settings, alternating")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--no-flush-denormal", action="store_true")
    p.add_argument("--competitor", action="store_true", help="run a 2-thread matmul loop in another process")
    p.add_argument("--amp", default="", help="override train.amp (bf16 | none)")
    args, overrides = p.parse_known_args()
    if bool(args.setting) == bool(args.checkpoint):
        p.error("give exactly one of --setting or --checkpoint")
    if args.setting:
        setting_main(args, [*overrides, *([f"--train.amp={args.amp}"] if args.amp else [])])
    else:
        checkpoint_main(args)


if __name__ == "__main__":
    main()
