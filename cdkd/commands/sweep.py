"""Sweep loss weights and EMA momentum with Ray Tune; select the winner without real labels.

    cdkd sweep                                            # MNIST demo teachers, the method's default space
    cdkd sweep --config jobs/configs/mnist.yaml --space tune/spaces/cdfkd_mfs.yaml --num-samples 16
    cdkd sweep --config FILE --scheduler pbt --train.iterations=800
    cdkd sweep --sweep-dir runs/sweeps/x --resume         # continue an interrupted sweep
    ray job submit --working-dir . -- python tune/sweep.py --config FILE --space SPACE

Trials run the engine of `cdkd distill`; unless the config sets `distributed.workers`, each trial runs it
in its own process (`workers: 0`, `cpus_per_worker` CPUs; teachers local or in Ray actors per config).
The selection metric is data-free (`probe_agreement`, default) or `val_acc` on `probe.val_samples` labeled
training samples; test accuracy is measured after the sweep, for the table only. Outputs, in the sweep
directory: results.parquet (one row per trial), best.yaml (for `cdkd distill --config`), trials/<id>/.
`tune/sweep.py` is the same command.
"""
from __future__ import annotations

import os
import time

import yaml

from ..cli import add_config_args, parse, run_config
from ..errors import CdkdError
from ..search_space import read_space
from .base import Parser, guarded
from .keys import format_keys


def sets_workers(config: str | None, overrides: list[str]) -> bool:
    """Whether the user chose distributed.workers (else sweep trials run the engine in their own process)."""
    if any(o.startswith("--distributed.workers=") for o in overrides):
        return True
    if not config:
        return False
    with open(config) as f:
        raw = yaml.safe_load(f) or {}
    return "workers" in (raw.get("distributed") or {})


def parser(prog: str = "cdkd sweep") -> Parser:
    p = Parser(prog, __doc__, epilog=format_keys())
    add_config_args(p)
    p.add_argument("--space", help="search space YAML (default: the method's loss weights, EMA momentum if any)")
    p.add_argument("--num-samples", type=int, default=8, help="trials")
    p.add_argument("--scheduler", default="asha", help="asha (default) | pbt | fifo")
    p.add_argument("--metric", default="probe_agreement",
                   help="probe_agreement (default) | probe_tv | val_acc | val_miou (segmentation)")
    p.add_argument("--max-concurrent", type=int, default=0, help="trials at a time (0 = as the CPUs allow)")
    p.add_argument("--grace-iterations", type=int, default=0, help="ASHA grace period (0 = iterations/4)")
    p.add_argument("--pbt-interval", type=int, default=0, help="PBT perturbation interval (0 = iterations/4)")
    p.add_argument("--sweep-dir", default="", help="default: runs/sweeps/<method>-<time>")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --sweep-dir")
    p.add_argument("--no-test", action="store_true", help="do not evaluate trials on the test split afterwards")
    return p


def main(argv: list[str] | None = None, prog: str = "cdkd sweep") -> int:
    args, overrides = parse(parser(prog), argv)

    def work() -> int:
        from ..distributed.sweep import SweepSettings, format_sweep_table, run_sweep
        if args.resume:
            if not args.sweep_dir:
                raise CdkdError("--resume needs --sweep-dir")
            settings = SweepSettings.load(args.sweep_dir)
        else:
            base = run_config(args, overrides).to_dict()
            if not sets_workers(args.config, overrides):
                base["distributed"]["workers"] = 0  # the engine in each trial's own process
            sweep_dir = args.sweep_dir or os.path.join("runs", "sweeps",
                                                       f"{base['method']}-{time.strftime('%Y%m%d-%H%M%S')}")
            settings = SweepSettings(sweep_dir, base, read_space(args.space, base["method"]), args.num_samples,
                                     args.scheduler, args.metric, args.max_concurrent, args.grace_iterations,
                                     args.pbt_interval, test=not args.no_test)
        out = run_sweep(settings, resume=args.resume)
        print(format_sweep_table(out["rows"], settings.metric, out["best"]["trial"]))
        print(f"best trial (*): {out['best']['trial']} by {settings.metric}\n  results: {out['results_path']}\n"
              f"  best config: {out['best_config_path']}  (cdkd distill --config {out['best_config_path']})")
        return 0
    return guarded(work)
