"""`cdkd sweep` as a script, for `ray job submit`: same flags (see `python tune/sweep.py --help`).

    python tune/sweep.py --config jobs/configs/mnist.yaml --space tune/spaces/cdfkd_mfs.yaml --num-samples 16
    ray job submit --working-dir . -- python tune/sweep.py --config FILE --space SPACE
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cdkd.commands import sweep as command  # noqa: E402

sets_workers = command.sets_workers


def main(argv: list[str]) -> int:
    return command.main(argv, prog="tune/sweep.py")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
