"""The Ray job entry point of `cdkd distill`: same flags, same output (see `cdkd distill --help`).

    python jobs/cdfkd_mfs.py                              # the MNIST demo (trains or reuses 3 LeNet-5 teachers)
    python jobs/cdfkd_mfs.py --config jobs/configs/mnist.yaml --train.iterations=500 --method=mad
    python jobs/cdfkd_mfs.py --config FILE --run_dir=runs/x --resume
    ray job submit --working-dir . -- python jobs/cdfkd_mfs.py --config FILE --distributed.teacher_pool=ray
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the uploaded working directory

from cdkd.commands import distill as command  # noqa: E402

distill = command.distill


def main(argv: list[str]) -> int:
    return command.main(argv, prog="jobs/cdfkd_mfs.py")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
