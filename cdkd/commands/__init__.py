"""`cdkd COMMAND ...`: one installed command for everything a user runs (the scripts in jobs/ and tune/ wrap it)."""
from __future__ import annotations

import importlib
import sys

# command -> (module in this package, one line for `cdkd --help`)
COMMANDS = {
    "distill": ("distill", "distill a teacher ensemble into a multi-header student (--help lists every config key)"),
    "sweep": ("sweep", "sweep loss weights with Ray Tune, select without real labels"),
    "train-teachers": ("train_teachers", "train teachers on a real data set (the demo's and the benchmarks')"),
    "eval": ("evaluate", "test accuracy (mIoU for CamVid) of an exported student (.pt2 or .onnx)"),
    "export": ("export", "re-export a run's student from its checkpoint (.pt2 and .onnx)"),
}


def usage() -> str:
    lines = ["usage: cdkd COMMAND [ARGS]   (cdkd COMMAND --help for its flags)", "", "commands:"]
    return "\n".join(lines + [f"  {name:<16}{text}" for name, (_, text) in COMMANDS.items()])


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the subcommand's `main`; returns the exit code (0, or 2 for bad input), also for --help."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)} (see cdkd --help)",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__name__}.{COMMANDS[argv[0]][0]}")
    try:
        return module.main(argv[1:], prog=f"cdkd {argv[0]}")
    except SystemExit as e:  # argparse: --help (0) or a bad flag (2)
        return e.code if isinstance(e.code, int) else 2
