"""Running out of memory while building a run or in its first iteration: one line naming the batch size
and, where the allocator said, the memory it needed (instead of a traceback)."""
from __future__ import annotations

import functools
import re
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from .errors import CdkdError

_CPU_OOM = "can't allocate memory"


def is_oom(e: BaseException) -> bool:
    """torch's CUDA OutOfMemoryError, Python's MemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and _CPU_OOM in str(e))


def needed(e: BaseException) -> str:
    """'2.00 GiB' / '40000000000000 bytes (37253 GiB)' from the allocator's message, or ''."""
    text = str(e)
    m = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]?i?B)", text)
    if m:
        return m.group(1)
    m = re.search(r"allocate (\d+) bytes", text)
    if m:
        n = int(m.group(1))
        return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
    return ""


def oom_error(cfg: Any, stage: str, e: BaseException) -> CdkdError:
    t = cfg.train
    need = needed(e)
    extra = f", probe.batch_size={cfg.probe.batch_size}" if "probe" in stage else ""
    return CdkdError(f"out of memory {stage} (train.batch_size={t.batch_size}{extra}, device {t.device}"
                     f"{'; it needed ' + need if need else ''}); lower train.batch_size or model.ngf, or use a "
                     "larger device")


@contextmanager
def oom_guard(cfg: Any, stage: str) -> Iterator[None]:
    try:
        yield
    except BaseException as e:  # noqa: BLE001 - only out-of-memory errors are turned into a line
        if not is_oom(e):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise oom_error(cfg, stage, e) from None


def guard_build(fn: Callable) -> Callable:
    """Decorator for `build(cfg, ...)`: out of memory while building -> one line."""
    @functools.wraps(fn)
    def wrapper(cfg, *args, **kwargs):
        with oom_guard(cfg, "while building the run"):
            return fn(cfg, *args, **kwargs)
    return wrapper
