"""What `--resume` checks before it continues a run: the checkpoint it reads (the newest, or with
`--resume-from-good` the newest one that reads), the teachers (the same files as when the run started)
and the metrics (every iteration up to the checkpoint, once; `--resume-allow-gaps` records a gap instead).
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from .checkpoint import load_run_checkpoint
from .errors import CdkdError


@dataclass(frozen=True)
class Resume:
    """`--resume` and its options; true as a flag, so `train(run, resume=Resume(...))` reads as before."""
    allow_gaps: bool = False      # metrics with missing or doubled iterations: record the gap, continue
    from_good: bool = False       # newest checkpoint unreadable: continue from the newest good one

    def __bool__(self) -> bool:
        return True


def resume_mode(args: Any) -> Resume | bool:
    """From the job's flags: False (start anew) or a `Resume`; either option flag implies --resume."""
    allow, good = getattr(args, "resume_allow_gaps", False), getattr(args, "resume_from_good", False)
    if not (args.resume or allow or good):
        return False
    return Resume(allow_gaps=allow, from_good=good)


def options(resume: Any) -> Resume:
    return resume if isinstance(resume, Resume) else Resume()


def prev_path(path: str) -> str:
    return os.path.join(os.path.dirname(path), "prev.pt")


def load_newest_good(path: str, from_good: bool) -> tuple[str, dict[str, Any]]:
    """(path, state) of `last.pt`, or, if it cannot be read and `from_good`, of the older `prev.pt`.

    Without `from_good` an unreadable `last.pt` stops with one line naming it and saying whether an older
    good checkpoint exists."""
    try:
        return path, load_run_checkpoint(path)
    except CdkdError as newest:
        older = prev_path(path)
        state, why = None, "no older checkpoint exists"
        if os.path.exists(older):
            try:
                state = load_run_checkpoint(older)
            except CdkdError:
                why = f"the older {older} cannot be read either"
        if state is None:
            raise CdkdError(f"newest checkpoint {newest}; {why}; start a new run_dir") from None
        step = state.get("engine", {}).get("step", "?")
        if not from_good:
            raise CdkdError(f"newest checkpoint {newest}; an older good checkpoint exists: {older} (iteration "
                            f"{step}); pass --resume-from-good to continue from it") from None
        print(f"[cdkd] {path} cannot be read; continuing from the older good checkpoint {older} (iteration {step})")
        return older, state


def teacher_record(pool: Any, cfg: Any) -> dict[str, Any]:
    """What a checkpoint remembers of its teachers: the pool fingerprint, and per teacher its name, path and
    weight hash (where the pool knows them)."""
    hashes = list(getattr(pool, "state_hashes", None) or [])
    if not hashes:
        hashes = [getattr(t, "state_hash", None) for t in (getattr(pool, "teachers", None) or [])]
    return {"fingerprint": getattr(pool, "fingerprint", None), "names": list(getattr(pool, "names", [])),
            "paths": [t.path for t in cfg.teachers], "hashes": hashes}


def check_teachers(saved: dict[str, Any] | None, now: dict[str, Any], where: str) -> None:
    """Refuse to continue on other teachers than the run started with (one line naming what changed)."""
    if not saved or not saved.get("fingerprint") or saved["fingerprint"] == now["fingerprint"]:
        return
    changed = []
    a, b = saved.get("hashes") or [], now.get("hashes") or []
    paths = now.get("paths") or saved.get("paths") or []
    if len(a) != len(b):
        changed.append(f"{len(a)} teachers then, {len(b)} now")
    else:
        changed += [f"teacher {i} ({paths[i] if i < len(paths) else '?'}) has other weights"
                    for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if not changed:
        changed.append(f"names/order {saved.get('names')} -> {now.get('names')}")
    raise CdkdError(f"cannot resume {where}: the teachers changed since the run started (fingerprint "
                    f"{saved['fingerprint']} -> {now['fingerprint']}: {'; '.join(changed)}); restore the "
                    "original teacher files or start a new run_dir")


def logged_iterations(directory: str, upto: int) -> list[int]:
    """The `iteration` of every metrics row in `directory` at or before `upto`, in part-file order."""
    out: list[int] = []
    for part in sorted(glob.glob(os.path.join(directory, "part-*.parquet"))):
        try:
            its = pq.read_table(part, columns=["iteration"]).column("iteration").to_pylist()
        except Exception as e:  # noqa: BLE001 - a part cut short: its rows are missing
            print(f"[cdkd] metrics part {part} cannot be read ({type(e).__name__}); its rows count as missing")
            continue
        out += [int(i) for i in its if i is not None and int(i) <= upto]
    return out


def metric_gaps(iterations: list[int], step: int, every: int = 1) -> tuple[list[list[int]], list[int]]:
    """([first, last] ranges of logged iterations missing up to `step`, duplicated iterations).

    The run logs one row every `every` iterations (train() logs every iteration): rows every, 2*every, ...
    up to step."""
    expected = set(range(every, step + 1, every))
    seen, dups = set(), []
    for i in iterations:
        if i in seen:
            dups.append(i)
        seen.add(i)
    missing = sorted(expected - seen)
    ranges: list[list[int]] = []
    for i in missing:
        if ranges and i - ranges[-1][1] == every:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    return ranges, sorted(set(dups))


def check_metrics(directory: str, step: int, allow_gaps: bool, every: int = 1) -> dict[str, Any]:
    """Stop with one line if the metrics do not hold every logged iteration up to `step` once; with
    `allow_gaps`, return what is missing (for resumes.jsonl and the next metrics row)."""
    ranges, dups = metric_gaps(logged_iterations(directory, step), step, every)
    if not ranges and not dups:
        return {}
    fmt = lambda r: f"{r[0]}" if r[0] == r[1] else f"{r[0]}-{r[1]}"  # noqa: E731
    what = []
    if ranges:
        what.append(f"missing iterations {', '.join(map(fmt, ranges[:5]))}{' ...' if len(ranges) > 5 else ''}")
    if dups:
        what.append(f"duplicated iterations {', '.join(map(str, dups[:5]))}{' ...' if len(dups) > 5 else ''}")
    if not allow_gaps:
        raise CdkdError(f"cannot resume: the metrics in {directory} do not match the checkpoint at iteration "
                        f"{step} ({'; '.join(what)}); pass --resume-allow-gaps to continue and record the gap")
    print(f"[cdkd] resuming with a gap in the metrics: {'; '.join(what)} (recorded in resumes.jsonl)")
    return {"missing_iterations": ranges, "duplicated_iterations": dups,
            "missing_rows": sum((b - a) // every + 1 for a, b in ranges)}
