"""Train K teachers with different seeds on a real data set and write cdkd checkpoints with their test accuracy.

    cdkd train-teachers --dataset mnist --arch lenet5 --seeds 0 1 2 --out runs/teachers
    cdkd train-teachers --dataset cifar10 --arch wrn_16_2 --seeds 0 1 2 --out runs/bench/teachers
    cdkd train-teachers --dataset cifar100 --arch resnet34 --epochs 200 --data-dir /data   # paper
    cdkd train-teachers --dataset camvid --arch lraspp_mbv3_large --seeds 0 --size 120 160

`jobs/train_teachers.py` is the same command.
"""
from __future__ import annotations

from ..errors import CdkdError
from .base import Parser, guarded

DATASETS = ["mnist", "cifar10", "cifar100", "imagefolder", "camvid"]


def parser(prog: str = "cdkd train-teachers") -> Parser:
    p = Parser(prog, __doc__)
    p.add_argument("--dataset", default="mnist", choices=DATASETS)
    p.add_argument("--arch", default="lenet5")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=0, help="0 = the data set's recipe (cdkd/demo.py RECIPES)")
    p.add_argument("--out", default="runs/teachers")
    p.add_argument("--data-dir", default="")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="working size of a segmentation data set (CamVid: 120 160)")
    p.add_argument("--force", action="store_true", help="retrain even if a cached checkpoint exists")
    return p


def main(argv: list[str] | None = None, prog: str = "cdkd train-teachers") -> int:
    args = parser(prog).parse_args(argv)

    def work() -> int:
        from ..data import load_data
        from ..demo import ensure_teachers
        from ..registry import MODELS
        if args.arch not in MODELS:
            MODELS.build(args.arch)  # raises with close matches
        if args.epochs < 0:
            raise CdkdError(f"--epochs must be positive, got {args.epochs}")
        data = load_data(args.dataset, args.data_dir, size=tuple(args.size) if args.size else None)
        ensure_teachers(data, args.dataset, args.arch, args.seeds, args.out, args.epochs or None, args.force)
        return 0
    return guarded(work)
