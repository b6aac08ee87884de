"""Tune sweeps: search-space validation, a 4-trial MNIST sweep end to end, PBT restore, resume after a crash."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from cdkd.config import load_config
from tests.conftest import REPO, exported_agreement, tiny_config, write_yaml

ray = pytest.importorskip("ray")

SWEEP = os.path.join(REPO, "tune", "sweep.py")


def sweep_cli():
    spec = importlib.util.spec_from_file_location("cdkd_tune_sweep", SWEEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture
def base_yaml(teacher_paths, data_root, tmp_path) -> str:
    cfg = tiny_config(teacher_paths, data={"name": "mnist", "root": data_root})
    return write_yaml(tmp_path / "base.yaml", cfg)


SPACE = {"loss.w_adv": {"loguniform": [0.1, 10.0]}, "loss.w_bn": {"uniform": [0.01, 1.0]}}


@pytest.mark.parametrize("space, message", [
    ({"loss.w_advv": {"uniform": [0.1, 1.0]}}, "unknown key 'loss.w_advv'; did you mean 'loss.w_adv'"),
    ({"losses.w_adv": {"uniform": [0.1, 1.0]}}, "unknown key 'losses.w_adv'"),
    ({"loss.w_adv": {"uniform": [1.0, 1.0]}}, "loss.w_adv: empty range [1.0, 1.0]"),
    ({"loss.w_adv": {"loguniform": [2.0, 0.5]}}, "loss.w_adv: empty range [2.0, 0.5]"),
    ({"loss.w_adv": {"choice": []}}, "loss.w_adv: choice needs a non-empty list"),
    ({"loss.w_adv": {"loguniform": [0.0, 1.0]}}, "loguniform needs low > 0"),
    ({"loss.w_adv": {"normal": [0.0, 1.0]}}, "expected one of uniform, loguniform, randint, choice"),
    ({"train.ema_momentum": {"uniform": [0.9, 1.5]}}, "train.ema_momentum=1.5: config train.ema_momentum must be in [0, 1)"),
    ({"train.ema_momentum": {"uniform": [0.9, 0.999]}}, "no effect with train.ema=false"),
    ({"train.iterations": {"uniform": [10, 20]}}, "expected int"),
    ({"teachers": {"choice": [1, 2]}}, "unknown key 'teachers'"),
])
def test_bad_search_space_fails_before_any_trial(base_yaml, tmp_path, capsys, space, message):
    sweep_dir = tmp_path / "sweep"
    rc = sweep_cli()(["--config", base_yaml, "--space", write_yaml(tmp_path / "space.yaml", space),
                      "--sweep-dir", str(sweep_dir), "--num-samples", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not sweep_dir.exists()  # nothing was started or written


def test_bad_sweep_settings_fail_before_any_trial(base_yaml, tmp_path, capsys):
    for args, message in [(["--scheduler", "hyperband"], "scheduler 'hyperband'"),
                          (["--metric", "test_acc"], "metric 'test_acc'"),
                          (["--metric", "val_acc"], "probe.val_samples")]:
        rc = sweep_cli()(["--config", base_yaml, "--sweep-dir", str(tmp_path / "s"), *args])
        err = capsys.readouterr().err
        assert rc == 2 and message in err, err
        assert not (tmp_path / "s").exists()


def test_four_trial_mnist_sweep_writes_table_and_best_config(ray_cluster, base_yaml, tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    rc = sweep_cli()(["--config", base_yaml, "--space", write_yaml(tmp_path / "space.yaml", SPACE),
                      "--sweep-dir", str(sweep_dir), "--num-samples", "4"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    rows = pq.read_table(sweep_dir / "results.parquet").to_pylist()
    assert len(rows) == 4
    assert {"trial", "loss.w_adv", "loss.w_bn", "probe_agreement", "probe_tv", "test_acc", "status"} <= set(rows[0])
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in rows)
    # (the metric's value is checked against the exported student's below, for the rerun winner, and for fifo
    # trials in test_trials_place_the_engine_as_the_config_says; ASHA's trials end at a report, unexported)
    assert all(0.1 <= r["loss.w_adv"] <= 10.0 and 0.01 <= r["loss.w_bn"] <= 1.0 for r in rows)
    # the table: a header, a rule and one line per trial, the winner starred
    table = out[out.index("trial"):].splitlines()
    assert sum(line.strip().lstrip("*").split(" ")[0] in {r["trial"] for r in rows} for line in table) == 4
    best = max((r for r in rows if r["status"] != "error"), key=lambda r: r["probe_agreement"])
    assert f"*{best['trial']}" in out
    # best.yaml is a complete run config that the job accepts unchanged
    cfg = load_config(str(sweep_dir / "best.yaml"))
    assert cfg.loss.w_adv == pytest.approx(best["loss.w_adv"]) and cfg.loss.w_bn == pytest.approx(best["loss.w_bn"])
    run_dir = tmp_path / "rerun"
    job = subprocess.run([sys.executable, os.path.join(REPO, "jobs", "cdfkd_mfs.py"), "--config",
                          str(sweep_dir / "best.yaml"), f"--run_dir={run_dir}"], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert job.returncode == 0, job.stderr[-2000:]
    result = json.loads(next(line for line in job.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["probe_agreement"] == pytest.approx(exported_agreement(str(run_dir), cfg.probe.path), abs=1e-6)


def resumes(sweep_dir, tune_trial_dir: str) -> list[dict]:
    """The engine's own record of each resume of a trial: the iteration and the checkpoint it came from."""
    trial_id = "_".join(os.path.basename(tune_trial_dir).split("_")[2:4])  # run_trial_<exp>_<n>_<tag>_<date>
    path = os.path.join(sweep_dir, "trials", trial_id, "resumes.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_pbt_exploit_restores_the_donor_checkpoint(ray_cluster, teacher_paths, tmp_path, capsys):
    """After each exploit the trial continues from the donor's iteration, not from scratch (Train V2-era Tune)."""
    base = write_yaml(tmp_path / "base.yaml", tiny_config(teacher_paths, train={"iterations": 12}))
    sweep_dir = tmp_path / "pbt"
    rc = sweep_cli()(["--config", base, "--space", write_yaml(tmp_path / "space.yaml", SPACE), "--scheduler", "pbt",
                      "--pbt-interval", "4", "--sweep-dir", str(sweep_dir), "--num-samples", "2", "--no-test"])
    assert rc == 0, capsys.readouterr().out[-3000:]
    with open(sweep_dir / "pbt_global.txt") as f:
        exploits = [json.loads(line) for line in f if line.strip()]
    assert exploits, "PBT never exploited: the test proves nothing"
    rows = pq.read_table(sweep_dir / "results.parquet").to_pylist()
    assert all(r["status"] == "done" and r["iteration"] == 12 for r in rows), rows
    trial_dirs = [os.path.join(sweep_dir, d) for d in os.listdir(sweep_dir) if d.startswith("run_trial_")]
    for target, donor, *_ in exploits:  # pbt_global.txt: [trial, trial it cloned, ...] by experiment tag
        target_dir = next(d for d in trial_dirs if f"_{target}_" in d)
        donor_dir = next(d for d in trial_dirs if f"_{donor}_" in d)
        # the engine loaded the donor's checkpoint (student, generator, optimisers, step) at the perturbation
        # point; a fresh start would log no resume, a restore of its own checkpoint would name its own directory
        loaded = [r for r in resumes(sweep_dir, target_dir) if r["from"].startswith(f"{donor_dir}/checkpoint_")]
        assert loaded and all(r["iteration"] > 0 and r["iteration"] % 4 == 0 for r in loaded), loaded


def test_interrupted_sweep_resumes(ray_cluster, teacher_paths, tmp_path):
    """Kill the sweep driver mid-run; `--resume` continues every trial from its last checkpoint."""
    base = write_yaml(tmp_path / "base.yaml", tiny_config(teacher_paths, train={"iterations": 60, "ckpt_every": 4}))
    sweep_dir = tmp_path / "sweep"
    args = [sys.executable, SWEEP, "--config", base, "--space", write_yaml(tmp_path / "space.yaml", SPACE),
            "--sweep-dir", str(sweep_dir), "--num-samples", "2", "--scheduler", "fifo", "--no-test"]
    # TUNE_GLOBAL_CHECKPOINT_S=0: Tune saves its experiment state on every loop, so each trial checkpoint older
    # than the newest one is known to it when the driver dies
    env = {**ray_cluster["env"], "RAY_ADDRESS": ray_cluster["address"], "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while not any(os.path.isdir(os.path.join(sweep_dir, d, "checkpoint_000002"))
                  for d in (os.listdir(sweep_dir) if sweep_dir.exists() else [])):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no trial checkpoint within 240 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    trial_dirs = [os.path.join(sweep_dir, d) for d in os.listdir(sweep_dir) if d.startswith("run_trial_")]
    checkpointed = [d for d in trial_dirs if sum(c.startswith("checkpoint_") for c in os.listdir(d)) >= 2]
    assert checkpointed
    done = subprocess.run([sys.executable, SWEEP, "--sweep-dir", str(sweep_dir), "--resume"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pq.read_table(sweep_dir / "results.parquet").to_pylist()
    assert len(rows) == 2 and all(r["status"] == "done" and r["iteration"] == 60 for r in rows), rows
    for d in checkpointed:  # continued from its own last checkpoint, not restarted from scratch
        loaded = resumes(sweep_dir, d)
        assert loaded and loaded[0]["iteration"] >= 4 and loaded[0]["from"].startswith(f"{d}/checkpoint_"), loaded


@pytest.mark.parametrize("distributed", [{"teacher_pool": "ray", "teacher_cpus": 0.25},
                                         {"workers": 1, "cpus_per_worker": 1.0}], ids=["teacher-actors", "ray-train"])
def test_trials_place_the_engine_as_the_config_says(ray_cluster, teacher_paths, tmp_path, capsys, distributed):
    """Trials with the teachers in Ray actors, and trials that drive a Ray Train run (TuneReportCallback)."""
    base = write_yaml(tmp_path / "base.yaml", tiny_config(teacher_paths, distributed=distributed))
    sweep_dir = tmp_path / "sweep"
    rc = sweep_cli()(["--config", base, "--space", write_yaml(tmp_path / "space.yaml", SPACE), "--scheduler", "fifo",
                      "--sweep-dir", str(sweep_dir), "--num-samples", "2", "--no-test"])
    assert rc == 0, capsys.readouterr().out[-3000:]
    rows = pq.read_table(sweep_dir / "results.parquet").to_pylist()
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows), rows
    for r in rows:  # each trial's metric is its exported student's agreement on the sweep's probe set
        assert r["probe_agreement"] == pytest.approx(
            exported_agreement(str(sweep_dir / "trials" / r["trial"]), str(sweep_dir / "probe.pt")), abs=1e-6)
    cfg = load_config(str(sweep_dir / "best.yaml"))
    assert cfg.distributed.teacher_pool == distributed.get("teacher_pool", "local")
    assert cfg.distributed.workers == distributed.get("workers", 0)
    if cfg.distributed.workers:  # Ray Train wrote its checkpoints into the trial's run directory
        assert any(d.startswith("checkpoint_") for d in os.listdir(sweep_dir / "trials" / rows[0]["trial"]))
