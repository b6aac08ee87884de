"""What the distillation benches share: calibrating the iteration count to a budget, and mean +- std over seeds."""
from __future__ import annotations

import statistics
import time
from typing import Any


def seconds_per_iteration(distiller: Any, warmup: int) -> float:
    """Time `warmup` iterations after one untimed one (allocator and oneDNN caches)."""
    distiller.train_iteration()
    t0 = time.perf_counter()
    for _ in range(warmup):
        distiller.train_iteration()
    return (time.perf_counter() - t0) / warmup


def calibrated_iterations(per_it: float, budget_s: float, max_iterations: int, min_iterations: int = 1) -> int:
    """Iterations that fit 92% of the budget (so the LR schedule ends inside it), within [min, max]."""
    return max(min_iterations, min(max_iterations, int(0.92 * budget_s / per_it)))


def summary(results: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Each key's value (one seed) or values (several seeds) plus `<key>_mean` / `<key>_std`; keys a run
    did not report are left out."""
    out: dict[str, Any] = {}
    for key in keys:
        if any(key not in r for r in results):
            continue
        values = [round(r[key], 4) if isinstance(r[key], float) else r[key] for r in results]
        out[key] = values[0] if len(values) == 1 else values
        if len(values) > 1:
            out[f"{key}_mean"] = round(statistics.mean(values), 4)
            out[f"{key}_std"] = round(statistics.stdev(values), 4)
    return out
