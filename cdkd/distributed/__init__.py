"""Ray placement of the engine: teacher actors, Ray Train workers, the job driver. Imports ray; `cdkd` does not.

Before anything here imports ray: Ray's own internal C++ log lines (`[... E 123 456] core_worker.cc:2465: ...`,
levels I/W/E), which Ray forwards from its processes to the driver's console, are kept off it through Ray's
documented `RAY_DEDUP_LOGS_SKIP_REGEX`. They are about Ray's own actors, not the run (Ray Train's controller logs
one at every start); they stay in Ray's log files (`logs/` of the session directory). `CDKD_RAY_LOGS=1` shows
them; a `RAY_DEDUP_LOGS_SKIP_REGEX` of your own is left as it is.
"""
import os

RAY_INTERNAL_LINES = r"\[\d{4}-\d\d-\d\d [\d:,.]+ [IWE] \d+ \d+\] \w+\.cc:\d+:"

if os.environ.get("CDKD_RAY_LOGS", "0") != "1":
    os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", RAY_INTERNAL_LINES)
