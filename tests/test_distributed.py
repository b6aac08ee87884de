"""Ray placement of the one engine, on a real two-node Ray cluster started with `ray start` on loopback.

One cluster serves every test here (started once per session, stopped at the end): the head node carries the
custom resource `head`, the second node `node2`, so tests can put teacher actors and train workers on
different nodes.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

ray = pytest.importorskip("ray")  # a dev dependency; the core package never imports it

from ray.job_submission import JobStatus, JobSubmissionClient  # noqa: E402

from cdkd.checkpoint import load_run_checkpoint  # noqa: E402
from cdkd.config import DistributedConfig, TeacherSpec, make_config  # noqa: E402
from cdkd.distributed.teacher_actors import RayTeacherPool  # noqa: E402
from cdkd.errors import TeacherError  # noqa: E402
from cdkd.distributed.train import make_trainer  # noqa: E402
from cdkd.metrics import read_metrics  # noqa: E402
from cdkd.trainer import build, train  # noqa: E402
from tests.conftest import RAY, REPO, exported_agreement, tiny_config, write_yaml  # noqa: E402
from tests.test_ddp import ITERATIONS, ddp_student, distance  # noqa: E402
from tests.test_generator_split import reference_grads  # noqa: E402

def ray_pool(teacher_paths, actors: int, **kw) -> RayTeacherPool:
    dc = DistributedConfig(teacher_pool="ray", teacher_actors=actors, teacher_cpus=0.25, **kw)
    return RayTeacherPool([TeacherSpec(path=p) for p in teacher_paths], dc)


@pytest.mark.parametrize("method", ["cdfkd_mfs", "cgdd"])
def test_actor_generator_gradient_equals_autograd(ray_cluster, teacher_paths, method):
    """Teachers in two actor processes (2 + 1): the split generator gradient equals single-process autograd."""
    pool = ray_pool(teacher_paths, actors=2)
    try:
        assert len({p["teachers"][0] for p in pool.placement}) == 2 and pool.ranges == [range(0, 2), range(2, 3)]
        cfg = make_config(tiny_config(teacher_paths, method=method))
        d = build(cfg, with_data=False, pool=pool).distiller
        local = build(cfg, with_data=False).distiller  # same seed: same student, generator, teachers
        d.train(), local.train()
        rng = torch.get_rng_state()
        ref = reference_grads(local, lambda: local.sample(local.generator, 16), cfg.loss)
        torch.set_rng_state(rng)
        d.opt_g.step = lambda *a, **k: None
        d.generator_step()
        split = [p.grad for p in d.generator.parameters()]
        diff = max((a - b).abs().max().item() for a, b in zip(ref, split))
        assert diff <= 1e-5, diff
        assert max(g.abs().max().item() for g in split) > 1e-4
        # the no-grad student targets, streamed per batch, equal the in-process ones (from one batched forward)
        xs = [d.sample(d.generator, 8)[0].detach() for _ in range(3)]
        for remote, mine in zip(pool.targets_of(xs), local.pool.targets_of(xs)):
            remote, mine = remote.result(), mine.result()
            assert torch.allclose(remote.logits, mine.logits, atol=1e-6)
            assert [m.shape for m in remote.maps or []] == [m.shape for m in mine.maps or []]
        # the bench's time split counts the training calls only: evaluation logits leave it untouched
        assert pool.stats["wait_s"] > 0 and pool.stats["compute_s"] > 0
        before = dict(pool.stats)
        assert pool.logits(xs[0]).shape[:2] == (3, 8)
        assert pool.stats == before
    finally:
        pool.shutdown()


def test_bad_teacher_in_actor_is_a_clear_error(ray_cluster, teacher_paths, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="corrupt.pt: cannot read checkpoint"):
        ray_pool([teacher_paths[0], str(corrupt)], actors=2)


def metrics_of(run_dir):
    return read_metrics(os.path.join(run_dir, "metrics")).to_pylist()


def test_multinode_teacher_actors_match_in_process(ray_cluster, teacher_paths, tmp_path):
    """Teacher actors on node2, the Ray Train worker on the head node: same losses as the in-process run."""
    sections = dict(train={"iterations": 3, "log_every": 1, "ckpt_every": 3})
    local_cfg = make_config(tiny_config(teacher_paths, str(tmp_path / "local"), **sections))
    train(build(local_cfg, with_data=False))
    cfg = make_config(tiny_config(teacher_paths, str(tmp_path / "ray"), **sections,
                                  distributed={"workers": 1, "cpus_per_worker": 0.5, "teacher_pool": "ray",
                                               "teacher_cpus": 0.25, "teacher_resources": {"node2": 0.1},
                                               "worker_resources": {"head": 0.1}}))
    pool = RayTeacherPool(cfg.teachers, cfg.distributed)
    head = ray_cluster_nodes()["head"]
    try:
        assert all(p["node"] != head for p in pool.placement)  # teachers live on node2
        result = make_trainer(cfg, pool, threads=1, with_data=False).fit()
    finally:
        pool.shutdown()
    assert result.checkpoint is not None and result.metrics["iteration"] == 3
    ours, ref = metrics_of(str(tmp_path / "ray")), metrics_of(str(tmp_path / "local"))
    assert [r["iteration"] for r in ours] == [1, 2, 3]
    for a, b in zip(ours, ref):  # stated tolerance: 1e-4 relative (float summation order across actors)
        for key in ("loss_s", "loss_g", "g_adv", "g_prior"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (key, a, b)


def kill_teacher_actor_in_generator_step(pool: RayTeacherPool, distiller, at_step: int,
                                         between_halves: bool = False) -> None:
    """SIGKILL the (first) teacher actor's process in the generator step of iteration `at_step` + 1: as the step
    begins (student targets in flight), or `between_halves`, after its forward (the actor held its graph)."""
    pid, call, done = pool.pids()[0], pool.generator_side, []

    def kill():
        if distiller.step == at_step and not done:
            os.kill(pid, signal.SIGKILL)
            done.append(pid)

    def generator_side(*args, **kwargs):
        if not between_halves:
            kill()
        step = call(*args, **kwargs)
        if between_halves:
            backward = step.backward

            def killing_backward(s):
                assert step.logits() is not None  # the forward has come back
                kill()
                return backward(s)
            step.backward = killing_backward
        return step
    pool.generator_side = generator_side


@pytest.mark.parametrize("between_halves", [False, True])
def test_dead_teacher_actor_is_restarted_and_the_run_goes_on(ray_cluster, teacher_paths, tmp_path, capsys,
                                                            between_halves):
    """A teacher actor killed mid-iteration: Ray restarts it (its __init__ reloads the teachers) and makes the
    calls in flight again; a generator step whose forward it held is made again whole. The run ends with the
    losses of an unbroken run (nothing reinitialised), and says so in one line."""
    sections = dict(train={"iterations": 5, "log_every": 1, "ckpt_every": 5})
    train(build(make_config(tiny_config(teacher_paths, str(tmp_path / "local"), **sections)), with_data=False))
    pool = ray_pool(teacher_paths, actors=1)
    try:
        old_pid = pool.pids()[0]
        run = build(make_config(tiny_config(teacher_paths, str(tmp_path / "ray"), **sections)), with_data=False,
                    pool=pool)
        kill_teacher_actor_in_generator_step(pool, run.distiller, at_step=2, between_halves=between_halves)
        result = train(run)
        assert pool.pids()[0] != old_pid and pool.restarts == 1
    finally:
        pool.shutdown()
    lines = [line for line in capsys.readouterr().out.splitlines() if "teacher actor" in line]
    assert len(lines) == 1 and "died" in lines[0] and "restarted it" in lines[0], lines
    assert result["iterations"] == 5
    ours, ref = metrics_of(str(tmp_path / "ray")), metrics_of(str(tmp_path / "local"))
    assert [r["iteration"] for r in ours] == [1, 2, 3, 4, 5]
    for a, b in zip(ours, ref):  # iterations 3-5 run after the restart: same student and generator as unbroken
        for key in ("loss_s", "loss_g", "g_adv", "g_prior"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (key, a, b)


def test_call_on_a_restarted_actor_is_answered_by_the_reloaded_process(ray_cluster, teacher_paths):
    """Ray restarts a killed actor on its own and its __init__ loads the teachers again; the pool's next call is
    answered by the new process with the pool's set-up applied there (the same targets as before), and the
    pool counts the restart."""
    pool = ray_pool(teacher_paths, actors=1)
    try:
        x = torch.randn(4, *pool.input_shape)
        before = pool.targets(x).result().logits
        old_pid = pool.pids()[0]
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:  # wait until Ray has the new process up (its pid differs), without the pool's help
            try:
                new_pid = ray.get(pool.actors[0].pid.remote(), timeout=10)
                if new_pid != old_pid:
                    break
            except ray.exceptions.RayActorError:
                pass
            assert time.monotonic() < deadline, "Ray did not restart the actor within 60 s"
        after = pool.targets(x).result().logits
        assert pool.restarts == 1 and torch.equal(before, after)
    finally:
        pool.shutdown()


def test_teacher_actor_that_cannot_come_back_stops_the_run_resumably(ray_cluster, teacher_paths, tmp_path):
    """No restarts left: a clear TeacherError after the last checkpoint, and a resume with new actors finishes."""
    cfg = make_config(tiny_config(teacher_paths, str(tmp_path / "run"), train={"iterations": 4, "ckpt_every": 2}))
    pool = ray_pool(teacher_paths, actors=1, teacher_restarts=0)
    try:
        run = build(cfg, with_data=False, pool=pool)
        kill_teacher_actor_in_generator_step(pool, run.distiller, at_step=2)
        with pytest.raises(TeacherError, match=r"teacher actor 0 \(.*\) died .*could not be restarted.*--resume"):
            train(run)
    finally:
        pool.shutdown()
    pool = ray_pool(teacher_paths, actors=1)
    try:
        result = train(build(cfg, with_data=False, pool=pool), resume=True)
    finally:
        pool.shutdown()
    assert result["iterations"] == 4
    assert [r["iteration"] for r in metrics_of(str(tmp_path / "run"))] == [1, 2, 3, 4]


def test_dead_train_worker_restarts_from_the_last_checkpoint(ray_cluster, teacher_paths, tmp_path):
    """A Ray Train worker SIGKILLed after the iteration-2 checkpoint: with max_failures=1 the worker group
    restarts from the newest checkpoint and finishes, and the metrics hold every iteration exactly once."""
    from ray.train import UserCallback

    class KillWorkerAfterReport(UserCallback):  # runs in the Train controller, which outlives the worker group
        killed: list = []

        def after_report(self, run_context, metrics, checkpoint):
            if not self.killed and checkpoint is not None and metrics[0]["iteration"] == 2:
                from ray.util.state import list_actors
                for actor in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]):
                    os.kill(actor.pid, signal.SIGKILL)
                    self.killed.append(actor.pid)

    run_dir = tmp_path / "run"
    cfg = make_config(tiny_config(teacher_paths, str(run_dir), train={"iterations": 6, "ckpt_every": 2},
                                  distributed={"workers": 1, "cpus_per_worker": 0.5, "max_failures": 1}))
    result = make_trainer(cfg, threads=1, with_data=False, callbacks=[KillWorkerAfterReport()]).fit()
    assert result.error is None and result.metrics["iteration"] == 6
    assert [r["iteration"] for r in metrics_of(str(run_dir))] == [1, 2, 3, 4, 5, 6]
    with open(run_dir / "resumes.jsonl") as f:
        resumes = [json.loads(line) for line in f]
    # one restart, from the newest complete checkpoint when the worker died: iteration 2, or 4 when the worker
    # had written that one before the SIGKILL landed (the controller's callback runs concurrently with it)
    assert len(resumes) == 1 and resumes[0]["iteration"] in (2, 4), resumes


def complete_checkpoints(run_dir) -> dict[str, int]:
    """Ray Train checkpoint directories of `run_dir` whose file reads completely -> their iteration."""
    out = {}
    for name in os.listdir(run_dir):
        if name.startswith("checkpoint_"):
            try:
                out[os.path.join(run_dir, name)] = load_run_checkpoint(
                    os.path.join(run_dir, name, "last.pt"))["engine"]["step"]
            except Exception:  # noqa: BLE001 - still being written
                pass
    return out


def test_killed_job_driver_resumes_from_the_newest_checkpoint(ray_cluster, teacher_paths, data_root, tmp_path):
    """SIGKILL the job's driver (the entrypoint `ray job submit` runs) mid-run; `--resume` continues from the
    newest complete checkpoint on disk and finishes with every iteration logged once."""
    run_dir = tmp_path / "run"
    cfg = tiny_config(teacher_paths, str(run_dir), train={"iterations": 40, "ckpt_every": 4},
                      distributed={"workers": 1, "cpus_per_worker": 0.5})
    args = [sys.executable, os.path.join(REPO, "jobs", "cdfkd_mfs.py"), "--config", write_yaml(tmp_path / "job.yaml", cfg),
            "--data-dir", os.path.abspath(data_root), "--data.download=false"]
    env = {**ray_cluster["env"], "RAY_ADDRESS": ray_cluster["address"]}
    proc = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while len(complete_checkpoints(run_dir) if run_dir.exists() else {}) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no second checkpoint within 240 s"
        time.sleep(0.2)  # polling the file system for the condition, with a deadline
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    newest = max(complete_checkpoints(run_dir).items(), key=lambda kv: kv[1])
    assert newest[1] < 40
    done = subprocess.run([*args, "--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(run_dir / "resumes.jsonl") as f:
        first = json.loads(f.readline())
    assert (first["iteration"], first["from"]) == (newest[1], newest[0])
    assert [r["iteration"] for r in metrics_of(str(run_dir))] == list(range(1, 41))


def ray_cluster_nodes() -> dict[str, str]:
    return {name: n["NodeID"] for n in ray.nodes() if n["Alive"] for name in n["Resources"] if name in ("head", "node2")}


def final_student(result) -> dict[str, torch.Tensor]:
    with result.checkpoint.as_directory() as d:
        return load_run_checkpoint(os.path.join(d, "last.pt"))["engine"]["student"]


def test_two_ddp_workers_vs_one(ray_cluster, teacher_paths, tmp_path):
    """2 Ray Train workers (gloo DDP, 16 samples each) vs 1 worker with the same global batch of 32.

    Batch statistics are global under DDP (cdkd/global_bn.py: train-mode BatchNorm of generator and student,
    and the in-process teachers' BN prior), so 2 workers compute what 1 worker computes; and Ray Train's 2
    workers compute exactly what plain torch DDP with 2 ranks computes (tests/test_ddp.py, same config).
    """
    def run(name, workers):
        cfg = make_config(tiny_config(teacher_paths, str(tmp_path / name),
                                      train={"iterations": ITERATIONS, "batch_size": 32, "ckpt_every": ITERATIONS},
                                      optim={"schedule": "none"},  # tests/test_ddp.py's config
                                      distributed={"workers": workers, "cpus_per_worker": 0.5}))
        return final_student(make_trainer(cfg, threads=1, with_data=False).fit())

    one, two = run("one", 1), run("two", 2)
    torch_two = ddp_student(teacher_paths, tmp_path, world=2)
    init = build(make_config(tiny_config(teacher_paths)), with_data=False).distiller.student.state_dict()
    moved, gap = distance(one, init), distance(two, one)
    print(f"1-worker update {moved:.4f}; 2-vs-1 worker gap {gap:.2e}; "
          f"Ray Train vs torch DDP {distance(two, torch_two):.2e}")
    assert moved > 0.1
    assert distance(two, torch_two) < 1e-5 * moved
    assert gap < 1e-5


def test_ray_train_restores_by_rerunning(ray_cluster, teacher_paths, tmp_path):
    """A rerun with the same run directory (= RunConfig storage_path/name) continues from the last checkpoint."""
    def cfg(iterations):
        return make_config(tiny_config(teacher_paths, str(tmp_path / "run"),
                                       train={"iterations": iterations, "ckpt_every": 2},
                                       distributed={"workers": 1, "cpus_per_worker": 0.5}))
    make_trainer(cfg(2), threads=1, with_data=False).fit()
    result = make_trainer(cfg(4), threads=1, with_data=False).fit()
    assert [r["iteration"] for r in metrics_of(str(tmp_path / "run"))] == [1, 2, 3, 4]
    assert final_student(result) is not None


def test_ray_job_submit_cli(ray_cluster, teacher_paths, data_root, tmp_path):
    """`ray job submit` (the CLI users run) against the `ray start` cluster: SUCCEEDED, result printed, files written."""
    run_dir = tmp_path / "job-run"
    cfg = tiny_config(teacher_paths, str(run_dir), data={"name": "mnist", "root": os.path.abspath(data_root),
                                                         "download": False},
                      distributed={"workers": 1, "cpus_per_worker": 0.5, "teacher_pool": "ray",
                                   "teacher_cpus": 0.25})
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**ray_cluster["env"], "RAY_ADDRESS": ray_cluster["dashboard"]}
    env.pop("RAY_JOB_ID", None)
    proc = subprocess.run([RAY, "job", "submit", "--working-dir", REPO, "--submission-id", f"cdkd-test-{os.getpid()}",
                           "--", "python", "jobs/cdfkd_mfs.py", "--config", str(cfg_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    client = JobSubmissionClient(ray_cluster["dashboard"])
    assert client.get_job_status(f"cdkd-test-{os.getpid()}") == JobStatus.SUCCEEDED
    result = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    assert result["iterations"] == 4 and result["probe_agreement"] == pytest.approx(
        exported_agreement(str(run_dir)), abs=1e-6)  # the result is the exported student's, on the run's probe
    assert "student (mean of headers)" in out and "teacher actors" in out
    # Ray Train's per-report and checkpoint lines stay in Ray's log files; cdkd's progress lines stay on the console
    assert "Reporting training result" not in out and "Checkpoint successfully created" not in out, out[-3000:]
    # Ray's own C++ lines (Ray Train's controller logs a 'PreemptionWatcher' one at every start) stay in its files
    assert ".cc:" not in out, out[-3000:]
    assert "[cdfkd_mfs] 4/4" in out
    for path in ("result.json", "student.pt2", "config.yaml"):
        assert (run_dir / path).exists(), path
    assert read_metrics(str(run_dir / "metrics")).num_rows == 4
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_dir / "metrics" / "tensorboard"))
    assert any(p.startswith("checkpoint_") for p in os.listdir(run_dir))
    shutil.rmtree(run_dir)
