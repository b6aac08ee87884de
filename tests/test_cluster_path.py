"""The cluster path as a user meets it on an autoscaling cluster: a head that does no work, nodes that join
while the job waits, a sweep that counts whole trials. Plus the pure pieces: fitting bundles on nodes, the
waiting line, the never-fit line, and no private Ray import in cdkd/.

The growing cluster is its own loopback cluster (a head with 0 CPUs); nodes join it with `ray start --address`,
as an autoscaler would add them. Ray's fake autoscaler is not used: its `start()` runs `ray stop --force`."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from cdkd.config import make_config
from cdkd.errors import CdkdError
from tests.conftest import RAY, REPO, free_port, kill_processes_of, tiny_config, write_yaml

ray = pytest.importorskip("ray")

from cdkd.distributed import resources  # noqa: E402

JOB = os.path.join(REPO, "jobs", "cdfkd_mfs.py")
SWEEP = os.path.join(REPO, "tune", "sweep.py")
TODAYS_FIXED_TIMEOUT_S = 120  # the teacher placement group's fixed wait before this issue (Ray Train's own: 60)


# ---- pure pieces -------------------------------------------------------------------------------------------

def test_how_many_whole_trials_fit_counts_every_resource():
    trial = [{"CPU": 0.01}, {"CPU": 1, "student_node": 1}, {"CPU": 1, "teacher_node": 1}]
    one_each = [{"CPU": 0}, {"CPU": 4, "teacher_node": 1}, {"CPU": 4, "student_node": 1}]
    assert resources.how_many_fit(trial, one_each) == 1  # plenty of CPUs, one of each custom resource
    assert resources.how_many_fit(trial, one_each + [{"CPU": 1, "student_node": 1}]) == 1  # no teacher room
    assert resources.how_many_fit(trial, one_each + [{"CPU": 2, "student_node": 1, "teacher_node": 1}]) == 2
    assert resources.how_many_fit(trial, [{"CPU": 0}]) == 0  # the bare head of an autoscaling cluster
    gpu = [{"CPU": 0.01}, {"CPU": 1, "GPU": 1}, {"CPU": 1, "GPU": 0.5}]
    assert resources.how_many_fit(gpu, [{"CPU": 8, "GPU": 3}]) == 2  # 1.5 GPUs a trial: CPUs alone would say 4


def test_a_bundle_no_node_type_offers_is_one_line_at_once(tmp_path):
    boot = write_yaml(tmp_path / "bootstrap.yaml", {
        "head_node_type": "head", "max_workers": 4,
        "available_node_types": {"head": {"resources": {"CPU": 0}},
                                 "gpu": {"resources": {"CPU": 8, "GPU": 4}, "max_workers": 2}}})
    cfg = make_config({"distributed": {"autoscaler_config": boot, "workers": 1, "use_gpu": True,
                                       "gpus_per_worker": 8}})
    nodes, final = resources.node_capacities(cfg.distributed, embedded=False)
    assert final and len(nodes) == 3  # the head once, the GPU type max_workers times
    with pytest.raises(CdkdError, match=r"a Ray Train worker asks for \{CPU: 1, GPU: 8\} but no node .* GPU: 4"):
        resources.check_can_fit([("a Ray Train worker", resources.worker_bundle(cfg.distributed))], nodes, final,
                                 "the cluster's node types")
    resources.check_can_fit([("ok", {"CPU": 1, "GPU": 4})], nodes, final, "x")  # fits a node type: no error
    # a node type with no CPU count (the launcher could not detect it) is no limit on CPUs; custom ones still are
    boot2 = write_yaml(tmp_path / "bootstrap2.yaml", {"head_node_type": "head", "available_node_types": {
        "head": {"resources": {"CPU": 0}}, "gpu": {"resources": {"teacher_gpu": 4, "GPU": 4}, "max_workers": 1}}})
    nodes2, _ = resources.node_capacities(make_config({"distributed": {"autoscaler_config": boot2}}).distributed, False)
    resources.check_can_fit([("w", {"CPU": 64, "GPU": 1, "teacher_gpu": 1})], nodes2, True, "x")
    with pytest.raises(CdkdError, match="teacher_gpu: 5"):
        resources.check_can_fit([("w", {"teacher_gpu": 5})], nodes2, True, "x")
    # without a launcher config, a cluster reached by address may still grow: it pends instead
    resources.check_can_fit([("w", {"GPU": 8})], [{"CPU": 2}], False, "x")


def test_waiting_prints_a_line_then_names_what_is_missing(ray_cluster, capsys):
    pg = ray.util.placement_group([{"CPU": 1, "absent_resource": 1}])
    try:
        with pytest.raises(CdkdError, match=r"gave up after \d+s .* missing \{CPU: 0, absent_resource: 1\}|"
                                            r"gave up after \d+s .* missing \{absent_resource: 1\}"):
            resources.wait_for([pg.ready()], "a test bundle", {"CPU": 1, "absent_resource": 1}, timeout_s=2.5,
                               report_s=1.0)
    finally:
        ray.util.remove_placement_group(pg)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[cdkd] waiting")]
    assert len(lines) >= 2 and "a test bundle" in lines[0] and "short of {absent_resource: 1}" in lines[0]


def test_no_private_ray_import_in_cdkd():
    bad = []
    for root, _, files in os.walk(os.path.join(REPO, "cdkd")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            with open(path) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                bad += [f"{path}: {m}" for m in mods if m.startswith("ray") and "._" in m]
    assert not bad, bad


# ---- a cluster that grows while the job waits --------------------------------------------------------------

@pytest.fixture(scope="module")
def growing_cluster():
    """A loopback head with no CPUs for work; `add_node(resources)` joins a 1-CPU node offering them."""
    port = free_port()
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"}
    temp_dir = tempfile.mkdtemp(prefix="cdkd-grow-")
    common = ["--node-ip-address=127.0.0.1", "--object-store-memory=100000000", "--disable-usage-stats",
              f"--temp-dir={temp_dir}"]

    def ray_cli(*args):
        proc = subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"ray {' '.join(args)} failed:\n{proc.stderr[-2000:]}"

    try:
        ray_cli("start", "--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false", *common)
        yield {"env": {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"},
               "add_node": lambda res: ray_cli("start", f"--address=127.0.0.1:{port}", "--num-cpus=1",
                                               f"--resources={json.dumps(res)}", *common)}
    finally:
        kill_processes_of(temp_dir, port)  # not `ray stop --force`: that ends every Ray instance on the machine
        shutil.rmtree(temp_dir, ignore_errors=True)


ON_CUSTOM_NODES = {"workers": 1, "cpus_per_worker": 1, "worker_resources": {"student_node": 1},
                   "teacher_pool": "ray", "teacher_actors": 1, "teacher_cpus": 1,
                   "teacher_resources": {"teacher_node": 1}, "wait_report_s": 10}


def read_until(path, pattern: str, proc, deadline_s: float) -> re.Match:
    """Poll the job's log file for `pattern` (the condition itself), failing if the job ends or time runs out."""
    deadline = time.monotonic() + deadline_s
    while True:
        with open(path) as f:
            found = re.search(pattern, f.read())
        if found:
            return found
        assert proc.poll() is None, open(path).read()[-3000:]
        assert time.monotonic() < deadline, f"no {pattern!r} within {deadline_s}s:\n{open(path).read()[-3000:]}"
        time.sleep(0.5)  # polling the log for the condition, with a deadline


def test_job_waits_for_nodes_that_join_later_and_the_driver_loads_no_teacher(growing_cluster, teacher_paths,
                                                                               tmp_path):
    cfg = tiny_config(teacher_paths, str(tmp_path / "run"), distributed=ON_CUSTOM_NODES)
    log = tmp_path / "job.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, JOB, "--config", write_yaml(tmp_path / "job.yaml", cfg)],
                                env=growing_cluster["env"], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        # the job pends (no resource gate, no fixed timeout) past today's fixed 120 s, saying what it waits for
        read_until(log, r"\[cdkd\] waiting (1[3-9]\d|[2-9]\d\d)s for 1 teacher actor.*teacher_node", proc,
                   TODAYS_FIXED_TIMEOUT_S + 60)
        growing_cluster["add_node"]({"teacher_node": 1})
        growing_cluster["add_node"]({"student_node": 1})
        assert proc.wait(timeout=600) == 0, open(log).read()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    text = open(log).read()
    actors = json.loads(re.search(r"\[cdkd\] teacher actors: (\[.*\])", text).group(1).replace("'", '"'))
    probe = int(re.search(r"built its probe set in a Ray task \(pid (\d+)", text).group(1))
    # the teachers were loaded in the actor and in the set-up task, on the nodes that joined: never in the driver
    assert proc.pid not in {a["pid"] for a in actors} | {probe}
    result = json.loads(re.search(r"RESULT (\{.*\})", text).group(1))
    assert result["iterations"] == 4


def test_sweep_never_runs_more_trials_than_the_cluster_places(growing_cluster, teacher_paths, tmp_path):
    """Two trials, each a process + teacher actor on the custom resources the cluster has once: one at a time."""
    # (runs after the job test: the module's nodes have joined; join them here when run alone)
    if not any(n["Resources"].get("teacher_node") for n in cluster_nodes(growing_cluster)):
        growing_cluster["add_node"]({"teacher_node": 1})
        growing_cluster["add_node"]({"student_node": 1})
    cfg = tiny_config(teacher_paths, distributed={**ON_CUSTOM_NODES, "workers": 0})
    sweep_dir = tmp_path / "sweep"
    done = subprocess.run([sys.executable, SWEEP, "--config", write_yaml(tmp_path / "base.yaml", cfg),
                           "--space", write_yaml(tmp_path / "space.yaml", {"loss.w_adv": {"choice": [0.5, 1.0]}}),
                           "--sweep-dir", str(sweep_dir), "--num-samples", "2", "--scheduler", "fifo"],
                          env=growing_cluster["env"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 at a time" in done.stdout, done.stdout[-2000:]
    spans = []  # each trial's [start, end] from Tune's own per-trial result.json (timestamps in whole seconds)
    for result_file in sweep_dir.glob("*/result.json"):
        with open(result_file) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        spans.append((rows[0]["timestamp"] - rows[0]["time_total_s"], rows[-1]["timestamp"]))
    assert len(spans) == 2
    (a0, a1), (b0, b1) = sorted(spans)
    assert a1 <= b0 + 1, f"trials overlapped: {spans}"


def cluster_nodes(cluster) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", "import json, ray; ray.init(); print(json.dumps(ray.nodes()))"],
                         env=cluster["env"], capture_output=True, text=True, timeout=120)
    return [n for n in json.loads(out.stdout.strip().splitlines()[-1]) if n["Alive"]]


def test_ray_internal_lines_are_kept_off_the_console_unless_asked():
    """`cdkd.distributed` sets Ray's documented skip regex before ray is imported: it matches Ray's C++ log lines,
    never cdkd's own; CDKD_RAY_LOGS=1 leaves it unset (the lines show again)."""
    code = "import os, cdkd.distributed; print(os.environ.get('RAY_DEDUP_LOGS_SKIP_REGEX'))"
    env = {k: v for k, v in os.environ.items() if k != "RAY_DEDUP_LOGS_SKIP_REGEX"}
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    off = subprocess.run([sys.executable, "-c", code], env={**env, "CDKD_RAY_LOGS": "1"}, capture_output=True,
                         text=True, cwd=REPO)
    skip = re.compile(on.stdout.strip())
    assert skip.search("[2026-12-03 17:49:26,837 E 17957 17984] core_worker.cc:2465: Actor with class name: "
                       "'PreemptionWatcher' and ID: 'c85' has constructor arguments in the object store")
    assert not skip.search("[cdfkd_mfs] 25/300 s_header=1.153 loss_s=8.294 | 2.17 it/s | ETA 126s")
    assert not skip.search("[cdkd] waiting 30s for 1 teacher actor(s) of {CPU: 1}, SPREAD")
    assert off.stdout.strip() == "None"
