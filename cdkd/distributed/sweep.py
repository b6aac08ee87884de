"""Ray Tune sweeps over a run config: ASHA (default), PBT or plain FIFO, selected on a data-free metric.

Each trial runs the same engine as `jobs/cdfkd_mfs.py`:
- `distributed.workers: 0`: the engine in the trial's own process (teachers local or in Ray actors); its
  checkpoints are Tune checkpoints (`ray.tune.report`), so PBT's exploit step really restores a donor's
  student, generator, optimisers and step, and an interrupted sweep resumes each trial where it stopped;
- `workers >= 1`: the trial is a driver function that builds the Ray Train `TorchTrainer` with
  `TuneReportCallback` (Train V2's Tune integration: metrics and checkpoint paths only, so no PBT there).

Selection uses only what a data-free user has: `probe_agreement` (the default) / `probe_tv` on the sweep's
probe set, or `val_acc` on `probe.val_samples` labeled training samples. Test accuracy is computed after
the sweep, from each trial's last checkpoint, for the report only.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.tune
import torch
import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search.basic_variant import BasicVariantGenerator

from ..checkpoint import load_run_checkpoint
from ..config import make_config
from ..errors import CdkdError, ConfigError
from ..resume import Resume
from ..runlock import run_lock
from ..search_space import Param, apply, parse_space
from ..trainer import build, evaluate, prepare_selection
from .launch import launch, make_pool
from .prepare import check_without_teachers, named_bundles, prepare_on_worker
from .resources import check_can_fit, embedded_cluster, fmt, how_many_fit, node_capacities, run_bundles, total, worker_bundle
from .train import CKPT_FILE, ReportedCheckpoints, absolute_paths

METRICS = {"probe_agreement": "max", "probe_tv": "min", "val_acc": "max", "val_miou": "max"}
SCHEDULERS = ("asha", "pbt", "fifo")


@dataclass
class SweepSettings:
    """Everything a sweep needs to start or resume (saved as <sweep_dir>/sweep.json)."""
    sweep_dir: str
    base: dict[str, Any]                    # the run config mapping every trial starts from
    space: dict[str, Any]                   # the raw YAML search space
    num_samples: int = 8
    scheduler: str = "asha"
    metric: str = "probe_agreement"
    max_concurrent: int = 0                 # 0 = as many whole trials (process, workers, teacher actors) as the
                                            # cluster's nodes hold at once (CPUs, GPUs, custom resources)
    grace_iterations: int = 0               # ASHA: iterations before a trial can be stopped (0 = iterations/4)
    pbt_interval: int = 0                   # PBT: iterations between exploit/explore steps (0 = iterations/4)
    seed: int = 0
    test: bool = True                       # evaluate every trial's last checkpoint on the test split afterwards

    @property
    def mode(self) -> str:
        return METRICS[self.metric]

    def save(self) -> None:
        with open(os.path.join(self.sweep_dir, "sweep.json"), "w") as f:
            json.dump(asdict(self), f, indent=2)

    @classmethod
    def load(cls, sweep_dir: str) -> "SweepSettings":
        path = os.path.join(sweep_dir, "sweep.json")
        if not os.path.exists(path):
            raise CdkdError(f"{sweep_dir} holds no sweep to resume (no sweep.json)")
        with open(path) as f:
            return cls(**json.load(f))


def validate(s: SweepSettings) -> list[Param]:
    """Every check that can fail, before Ray or any trial starts."""
    if s.scheduler not in SCHEDULERS:
        raise ConfigError(f"scheduler {s.scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    if s.metric not in METRICS:
        raise ConfigError(f"metric {s.metric!r}: choose one of {', '.join(METRICS)}")
    if s.num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {s.num_samples}")
    params = parse_space(s.space, s.base)
    cfg = make_config(s.base)
    if s.metric in ("val_acc", "val_miou") and not cfg.probe.val_samples:
        raise ConfigError(f"metric {s.metric} needs labeled samples: set probe.val_samples=N (from the train split)")
    if s.metric.startswith("probe") and not cfg.probe.samples:
        raise ConfigError(f"metric {s.metric} needs the probe set: probe.samples must be > 0")
    if s.scheduler == "pbt" and cfg.distributed.workers:
        raise ConfigError("scheduler pbt needs the engine in the trial process (distributed.workers=0): Ray Train's "
                          "Tune callback forwards checkpoint paths, not Tune checkpoints that PBT could clone")
    return params


def tune_space(params: list[Param]) -> dict[str, Any]:
    """Tune domains keyed by the dotted config keys (constants are plain values)."""
    make = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    out = {}
    for p in params:
        if p.kind == "constant":
            out[p.key] = p.args[0]
        elif p.kind == "choice":
            out[p.key] = tune.choice(list(p.args))
        elif p.kind == "randint":
            out[p.key] = tune.randint(p.args[0], p.args[1] + 1)  # inclusive upper end, as written in the YAML
        else:
            out[p.key] = make[p.kind](*p.args)
    return out


def trial_config(base: dict[str, Any], values: dict[str, Any], sweep_dir: str, trial_id: str):
    cfg = make_config(apply(base, values))
    cfg.run_dir = os.path.join(sweep_dir, "trials", trial_id)
    return cfg


def run_trial(config: dict[str, Any], settings: SweepSettings) -> None:
    """One Tune trial: the engine in this process, or a Ray Train run driven from here (`launch` decides)."""
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_config(settings.base, config, settings.sweep_dir, trial_id)
    threads = max(1, int(cfg.distributed.cpus_per_worker))
    torch.set_num_threads(threads)
    pool = make_pool(cfg)
    try:
        # a trial may continue from another trial's checkpoint (a PBT exploit): its metrics may have a gap
        launch(cfg, pool, resume=Resume(allow_gaps=True), threads=threads, with_data=cfg.probe.val_samples > 0, test=False,
               store=ReportedCheckpoints(ray.tune.report, ray.tune.get_checkpoint, ray.tune.Checkpoint),
               callbacks=[TuneReportCallback()],
               lock=False)  # the sweep driver holds the sweep directory's lock; Tune owns the trial directories (a
        # paused trial's old process may still hold a per-trial lock while its PBT successor starts)
    finally:
        if pool is not None:
            pool.shutdown()


def trial_process(cfg) -> dict[str, float]:
    """What Tune reserves for a trial's own process: the engine's bundle (workers 0), or a token CPU share for a
    driver that only waits on its Ray Train workers (so it never starves them, ray#54305)."""
    return worker_bundle(cfg.distributed) if cfg.distributed.workers == 0 else {"CPU": 0.01}


def make_scheduler(s: SweepSettings, params: list[Param], iterations: int, ckpt_every: int):
    def on_report_grid(n: int) -> int:  # a multiple of ckpt_every (reports only happen there)
        return max(ckpt_every, ckpt_every * round(n / ckpt_every))
    if s.scheduler == "asha":
        return tune.schedulers.ASHAScheduler(time_attr="iteration", max_t=iterations, reduction_factor=2,
                                             grace_period=on_report_grid(s.grace_iterations or iterations // 4))
    if s.scheduler == "pbt":
        mutations = {k: v for k, v in tune_space(params).items() if hasattr(v, "sample")}
        # synch: trials are compared at the same iteration (the probe metric rises with training progress)
        return tune.schedulers.PopulationBasedTraining(
            time_attr="iteration", perturbation_interval=on_report_grid(s.pbt_interval or iterations // 4),
            hyperparam_mutations=mutations, synch=True)
    return None


def run_sweep(s: SweepSettings, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) the sweep; returns {rows, best, best_config_path, results_path}."""
    params = validate(s)
    os.makedirs(s.sweep_dir, exist_ok=True)
    with run_lock(s.sweep_dir, "sweep", hint=" (Ctrl-C stops it; --resume continues it)"):  # one sweep per directory
        return _run_sweep(s, params, resume)


def _run_sweep(s: SweepSettings, params: list[Param], resume: bool) -> dict[str, Any]:
    s.sweep_dir = os.path.abspath(s.sweep_dir)
    base_cfg = absolute_paths(make_config(s.base))
    base_cfg.probe.path = os.path.abspath(base_cfg.probe.path or os.path.join(s.sweep_dir, "probe.pt"))  # one for all
    s.base = {**base_cfg.to_dict(), "run_dir": ""}
    exists = tune.Tuner.can_restore(s.sweep_dir)
    if exists and not resume:
        raise CdkdError(f"{s.sweep_dir} already holds a sweep; pass --resume to continue it or choose another "
                        "sweep directory")
    if not exists:
        s.save()
    embedded = embedded_cluster()
    with_data = base_cfg.probe.val_samples > 0
    if embedded:  # this machine does the work: every check, then the sweep's one probe set, before Ray starts
        prepare_selection(build(base_cfg, with_data=with_data))
    else:  # a cluster's driver only schedules: what needs the teachers runs on a worker's resources (below)
        check_without_teachers(base_cfg, s.sweep_dir)
    if not ray.is_initialized():
        ray.init()  # the cluster in RAY_ADDRESS (`ray job submit` sets it), else an embedded local one
    # A trial is the sum of its bundles: its process, its Ray Train workers, its teacher actors. Tune reserves the
    # process only: Train V2 and the teacher pool place the rest in placement groups of their own, so a
    # PlacementGroupFactory holding them too would reserve them twice. Concurrency counts whole trials instead.
    driver = trial_process(base_cfg)
    bundles = run_bundles(base_cfg, driver)
    nodes, final = node_capacities(base_cfg.distributed, embedded)
    where = "this cluster" if embedded else "the cluster's node types"
    check_can_fit([("a sweep trial's process", driver), *named_bundles(base_cfg)], nodes, final, where)
    fit = how_many_fit(bundles, nodes)
    concurrent = s.max_concurrent or max(1, fit)
    if not s.max_concurrent and not fit:
        print(f"[cdkd] no whole trial ({fmt(total(bundles))}) fits the cluster's nodes yet: one trial at a time until "
              "it grows (or set --max-concurrent)", flush=True)
    if not embedded:
        prepare_on_worker(base_cfg, None, worker_bundle(base_cfg.distributed), with_data=with_data)
    resources = {"CPU": 0.0, **driver}
    trainable = tune.with_resources(tune.with_parameters(run_trial, settings=s), resources)
    if exists:
        print(f"[cdkd] resuming the sweep in {s.sweep_dir}")
        tuner = tune.Tuner.restore(s.sweep_dir, trainable, resume_errored=True)
    else:
        tuner = make_tuner(s, params, trainable, concurrent, base_cfg)
    print(f"[cdkd] sweep: {s.num_samples} trials, {s.scheduler}, selecting on {s.metric} ({s.mode}), "
          f"{concurrent} at a time, {resources} per trial process; {s.sweep_dir}")
    grid = tuner.fit()
    return summarise(s, params, grid)


def make_tuner(s: SweepSettings, params: list[Param], trainable, concurrent: int, cfg) -> tune.Tuner:
    t = cfg.train
    search = BasicVariantGenerator(random_state=s.seed, max_concurrent=concurrent)  # (TuneConfig's is ignored)
    return tune.Tuner(
        trainable, param_space=tune_space(params),
        tune_config=tune.TuneConfig(metric=s.metric, mode=s.mode, num_samples=s.num_samples, search_alg=search,
                                    scheduler=make_scheduler(s, params, t.iterations, t.ckpt_every)),
        run_config=tune.RunConfig(
            name=os.path.basename(s.sweep_dir), storage_path=os.path.dirname(s.sweep_dir), verbose=1,
            failure_config=tune.FailureConfig(max_failures=cfg.distributed.max_failures),
            # PBT clones a donor's checkpoint while the donor runs on: keep them all
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if s.scheduler == "pbt" else 2)))


def _checkpoint_file(result) -> str | None:
    path = result.checkpoint.path if result.checkpoint else (result.metrics or {}).get("checkpoint_path")
    return os.path.join(path, CKPT_FILE) if path else None


@torch.no_grad()
def trial_test_accuracy(s: SweepSettings, values: dict[str, Any], ckpt_file: str) -> float:
    """The report-only test accuracy (segmentation: mIoU) of a trial's last checkpoint (after the selection)."""
    cfg = trial_config(s.base, values, s.sweep_dir, "test-eval")
    run = build(cfg)
    run.distiller.load_state(load_run_checkpoint(ckpt_file)["engine"])
    return evaluate(run)[f"student_{run.task.metric}"]


def summarise(s: SweepSettings, params: list[Param], grid) -> dict[str, Any]:
    keys = [p.key for p in params if p.kind != "constant"]
    total = make_config(s.base).train.iterations
    rows = []
    for r in grid:
        m = r.metrics or {}
        row = {"trial": m.get("trial_id") or os.path.basename(r.path), **{k: r.config.get(k) for k in keys},
               s.metric: m.get(s.metric), "iteration": m.get("iteration", 0),
               "status": "error" if r.error else ("done" if m.get("iteration", 0) >= total else "stopped")}
        for extra in METRICS:
            if extra != s.metric and extra in m:
                row[extra] = m[extra]
        rows.append((row, r))
    scored = [(row, r) for row, r in rows if row[s.metric] is not None and row["status"] != "error"]
    if not scored:
        raise CdkdError(f"no trial reported {s.metric}; see the trial logs in {s.sweep_dir}")
    sign = 1 if s.mode == "max" else -1
    best_row, best_result = max(scored, key=lambda rr: sign * rr[0][s.metric])
    if s.test and make_config(s.base).data.name != "none":  # only now, with the choice made, is the test split
        # touched (for the table); a data-free sweep (data.name: none) has no test split and reports the probe only
        for row, r in rows:
            ckpt = _checkpoint_file(r)
            row["test_acc"] = trial_test_accuracy(s, r.config, ckpt) if ckpt and os.path.exists(ckpt) else None
    table = [row for row, _ in rows]
    results_path = os.path.join(s.sweep_dir, "results.parquet")
    pq.write_table(pa.Table.from_pylist(table), results_path)
    best_cfg = make_config(apply(s.base, best_result.config))
    best_cfg.run_dir = ""
    best_path = os.path.join(s.sweep_dir, "best.yaml")
    with open(best_path, "w") as f:
        f.write(f"# best of sweep {s.sweep_dir} by {s.metric} ({s.mode}) = {best_row[s.metric]:.4f}: trial "
                f"{best_row['trial']}\n")
        yaml.safe_dump(best_cfg.to_dict(), f, sort_keys=False)
    return {"rows": table, "best": best_row, "best_config_path": best_path, "results_path": results_path}


def format_sweep_table(rows: list[dict[str, Any]], metric: str, best_trial: str) -> str:
    cols = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[("*" if c == "trial" and row["trial"] == best_trial else "") + _fmt(row.get(c)) for c in cols]
             for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    sign = -1 if METRICS[metric] == "max" else 1
    order = sorted(range(len(rows)), key=lambda i: (rows[i].get(metric) is None, sign * (rows[i].get(metric) or 0)))
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(cells[i]) for i in order)])


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4f}"
    return str(v)
