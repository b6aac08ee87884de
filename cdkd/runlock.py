"""One run (or sweep) per directory: an exclusive OS file lock on `<dir>/.lock` for the whole run.

The lock is `fcntl.flock` on an open file descriptor, so it dies with its process: a killed run leaves no
stale marker, and the next run or `--resume` takes it over. The holder writes its PID and host into the
file after locking; a second run there reads them and stops with one line naming them.

Locks are re-entrant within one process (the Ray driver that runs the engine in-process takes the lock in
`run_on_ray` and again in `train`): the second acquisition of a directory this process holds is a no-op.
"""
from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from .errors import CdkdError, first_line

LOCK_FILE = ".lock"
_held: dict[str, int] = {}        # realpath of a locked directory -> nesting depth, in this process
_guard = threading.Lock()


def holder(directory: str) -> str:
    """What the lock file of `directory` says about its holder ('' when it says nothing yet)."""
    try:
        with open(os.path.join(directory, LOCK_FILE)) as f:
            return f.read().strip()
    except OSError:
        return ""


def check_free(directory: str, what: str = "run", hint: str = "") -> None:
    """CdkdError (naming the holder) if another process holds the lock of `directory`; nothing is held after."""
    if not directory or not os.path.exists(os.path.join(directory, LOCK_FILE)):
        return
    with run_lock(directory, what, hint):
        pass


@contextmanager
def run_lock(directory: str, what: str = "run", hint: str = "") -> Iterator[None]:
    """Hold the exclusive lock of `directory` (created if missing) for the block; CdkdError if another
    process holds it. `what` names the thing in the message ("run", "sweep")."""
    key = os.path.realpath(directory)
    with _guard:
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _guard:
                _held[key] -= 1
        return
    try:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise CdkdError(f"{what} directory {directory} is not writable ({first_line(e)})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = ""
            for _ in range(50):  # the holder writes its PID right after locking: wait for it, briefly
                who = holder(directory)
                if who:
                    break
                time.sleep(0.01)
            raise CdkdError(f"{directory} is in use by another {what} ({who or 'PID unknown'}); wait for it to "
                            f"finish or stop it{hint}, or choose another directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        os.fsync(fd)
        with _guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _guard:
                del _held[key]
            os.ftruncate(fd, 0)  # still locked: nobody reads a stale holder afterwards
    finally:
        os.close(fd)  # releases the flock
