"""What every subcommand shares: a parser whose errors are one `error:` line, and CdkdError -> exit 2."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from ..errors import CdkdError


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument prints one `error: ...` line (no usage block) and exits 2, like every other
    bad input of cdkd."""

    def __init__(self, prog: str, doc: str | None, **kwargs) -> None:
        super().__init__(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def guarded(work: Callable[[], int]) -> int:
    """Run `work`; a CdkdError becomes one `error:` line on stderr and exit code 2; Ctrl-C / SIGTERM (after the
    run saved its checkpoint, or a second one that stops at once) one `interrupted:` line and 130 / 143."""
    from ..interrupt import Interrupted
    try:
        return work()
    except (Interrupted, KeyboardInterrupt) as e:
        print(f"interrupted: {str(e) or 'stopped before the run started'}", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except CdkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
