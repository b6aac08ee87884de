"""Train K teachers with different seeds on a real data set and write cdkd checkpoints with their test accuracy.

    python jobs/train_teachers.py --dataset mnist --arch lenet5 --seeds 0 1 2 --out runs/teachers
    python jobs/train_teachers.py --dataset cifar10 --arch wrn_16_2 --seeds 0 1 2 --out runs/bench/teachers
    python jobs/train_teachers.py --dataset cifar100 --arch resnet34 --epochs 200 --data-dir /data   # paper
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cdkd.data import load_data  # noqa: E402
from cdkd.demo import ensure_teachers  # noqa: E402
from cdkd.errors import CdkdError  # noqa: E402
from cdkd.registry import MODELS  # noqa: E402


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=["mnist", "cifar10", "cifar100", "imagefolder"])
    p.add_argument("--arch", default="lenet5")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=0, help="0 = the data set's recipe (cdkd/demo.py RECIPES)")
    p.add_argument("--out", default="runs/teachers")
    p.add_argument("--data-dir", default="")
    p.add_argument("--force", action="store_true", help="retrain even if a cached checkpoint exists")
    args = p.parse_args(argv)
    try:
        if args.arch not in MODELS:
            MODELS.build(args.arch)  # raises with close matches
        if args.epochs < 0:
            raise CdkdError(f"--epochs must be positive, got {args.epochs}")
        data = load_data(args.dataset, args.data_dir)
        ensure_teachers(data, args.dataset, args.arch, args.seeds, args.out, args.epochs or None, args.force)
    except CdkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
