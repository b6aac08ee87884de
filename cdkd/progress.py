"""Progress output for long work: a tqdm bar on a terminal, plain log lines (it/s, ETA) in job logs."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    def __init__(self, total: int, desc: str, start: int = 0, log_every: int = 0) -> None:
        self.total, self.desc, self.n = total, desc, start
        self.t0, self.n0 = time.perf_counter(), start
        self.log_every = log_every or max(1, total // 20)
        self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True, leave=False,
                        disable=not getattr(sys.stderr, "isatty", lambda: False)())  # Tune's log Tee has none

    def rate(self) -> float:
        return (self.n - self.n0) / max(time.perf_counter() - self.t0, 1e-9)

    def update(self, logs: dict[str, float]) -> None:
        self.n += 1
        self.bar.update(1)
        shown = {k: v for k, v in logs.items() if not k.startswith("lr")}
        self.bar.set_postfix({k: _fmt(v) for k, v in list(shown.items())[:4]}, refresh=False)
        if self.n % self.log_every == 0 or self.n == self.total:
            rate = self.rate()
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            msg = " ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
            self.bar.write(f"[{self.desc}] {self.n}/{self.total} {msg} | {rate:.2f} it/s | ETA {eta:.0f}s",
                           file=sys.stdout)
            sys.stdout.flush()

    def close(self) -> None:
        self.bar.close()
