"""Data-free distillation of a teacher ensemble into a multi-header student (CDFKD-MFS and presets).

    python jobs/cdfkd_mfs.py                              # the MNIST demo (trains or reuses 3 LeNet-5 teachers)
    python jobs/cdfkd_mfs.py --config jobs/configs/mnist.yaml --train.iterations=500 --method=mad
    python jobs/cdfkd_mfs.py --config FILE --run_dir=runs/x --resume
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cdkd.config import load_config, make_config  # noqa: E402
from cdkd.demo import demo_config  # noqa: E402
from cdkd.errors import CdkdError  # noqa: E402
from cdkd.trainer import build, format_table, train  # noqa: E402


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config; without it the embedded MNIST demo runs")
    p.add_argument("--resume", action="store_true", help="continue the run in run_dir from its last checkpoint")
    p.add_argument("--data-dir", default="", help="data directory (default: $CDKD_DATA_DIR, ./data, ../shared/datasets)")
    args, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if not (o.startswith("--") and "=" in o)]
    if bad:
        p.error(f"unrecognised arguments {bad}: overrides look like --section.key=value")
    if args.data_dir:
        overrides.append(f"--data.root={args.data_dir!r}")
    try:
        if args.config:
            cfg = load_config(args.config, overrides)
        else:
            make_config({}, overrides)  # validate the overrides before training any teacher
            cfg = make_config(demo_config(data_root=args.data_dir), overrides)
        run = build(cfg)
        result = train(run, resume=args.resume)
    except CdkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    rd = cfg.run_dir
    print(f"run directory: {rd}\n  checkpoint: {rd}/checkpoints/last.pt\n  metrics: {rd}/metrics/*.parquet\n"
          f"  samples: {rd}/samples/\n  exported student: {result['exported_student']}\n  result: {rd}/result.json")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
