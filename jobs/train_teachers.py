"""`cdkd train-teachers` as a script: same flags (see `python jobs/train_teachers.py --help`).

    python jobs/train_teachers.py --dataset mnist --arch lenet5 --seeds 0 1 2 --out runs/teachers
    python jobs/train_teachers.py --dataset cifar10 --arch wrn_16_2 --seeds 0 1 2 --out runs/bench/teachers
    python jobs/train_teachers.py --dataset camvid --arch lraspp_mbv3_large --seeds 0 --size 120 160 \
        --out runs/bench/camvid/teachers
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cdkd.commands import train_teachers as command  # noqa: E402


def main(argv: list[str]) -> int:
    return command.main(argv, prog="jobs/train_teachers.py")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
