"""Ctrl-C and SIGTERM stop a run cleanly: the current iteration finishes, a checkpoint is written, the job
exits 130 (SIGINT) / 143 (SIGTERM) with one line saying how to resume. A second signal stops at once.

`StopSignals` installs the handlers (main thread only) for a block and restores the previous ones after it;
`Interrupted` is what the run raises and the job turns into the exit code.
"""
from __future__ import annotations

import os
import signal
import threading
from types import FrameType

from .errors import CdkdError

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(CdkdError):
    """The run stopped on a signal; `exit_code` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def resume_hint(run_dir: str) -> str:
    return (f"resume with: python jobs/cdfkd_mfs.py --config {os.path.join(run_dir, 'config.yaml')} "
            f"--run_dir={run_dir} --resume")


class StopSignals:
    """Record the first SIGINT/SIGTERM in `self.signum` (the run stops after the current iteration); on a
    second, call `on_second(signum)` (default: raise `Interrupted` at once)."""

    def __init__(self, on_second=None) -> None:
        self.signum: int | None = None
        self.on_first = None          # called with the first signal's number (the Ray driver: ask workers to stop)
        self.on_second = on_second
        self._previous: dict[int, object] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 130)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            if self.on_first is not None:
                self.on_first(signum)
            return
        self.restore()  # a third signal gets the default behaviour
        if self.on_second is not None:
            self.on_second(signum)
        raise Interrupted(f"second {signal.Signals(signum).name}: stopped at once, without a new checkpoint",
                          EXIT_CODES.get(signum, 130))

    def __enter__(self) -> "StopSignals":
        return self.install()

    def install(self) -> "StopSignals":
        """(Again, after `ray.init`: Ray's C++ failure handler takes over SIGTERM in a driver.)"""
        if threading.current_thread() is threading.main_thread():
            for s in EXIT_CODES:
                previous = signal.signal(s, self._handle)
                self._previous.setdefault(s, previous)
        return self

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self.restore()
