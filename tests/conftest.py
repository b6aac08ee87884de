import os
import secrets

# Ray reads its auth settings once per process, so they are set here, before any test module imports ray:
# token authentication (Ray's default for clusters) with one fresh token for every process of the session.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from cdkd.models import create_model  # noqa: E402
from cdkd.teachers import save_classifier  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO, "..", "shared", "datasets")


@pytest.fixture(scope="session")
def data_root() -> str:
    """Real data sets: $CDKD_DATA_DIR, else ../shared/datasets beside the checkout."""
    root = os.environ.get("CDKD_DATA_DIR", SHARED_DATA)
    assert os.path.isdir(os.path.join(root, "mnist")), f"MNIST IDX files expected under {root}/mnist"
    return root


def random_teachers(directory, arch: str, input_shape: tuple[int, int, int], k: int = 3) -> list[str]:
    """k randomly initialised 10-class teachers of `arch` (seeds 0..k-1) as cdkd checkpoints in `directory`."""
    paths = []
    for seed in range(k):
        torch.manual_seed(seed)
        path = str(directory / f"{arch}-{seed}.pt")
        save_classifier(path, create_model(arch), arch, {"num_classes": 10, "in_chans": input_shape[0]}, input_shape)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def teacher_paths(tmp_path_factory) -> list[str]:
    """Three randomly initialised LeNet-5 teachers (different seeds) as cdkd checkpoints."""
    return random_teachers(tmp_path_factory.mktemp("teachers"), "lenet5", (1, 32, 32))


RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """`ray start --head` + a second `ray start` node, both on 127.0.0.1; this driver connects to it.

    Token authentication is on (Ray's default for clusters): conftest gives every process of the session one
    fresh token through RAY_AUTH_TOKEN, as a user would for `ray start` on several nodes and `ray job submit`.
    """
    port, dash = free_port(), free_port()
    # as with an activated virtualenv: a job's `python` entrypoint is this interpreter
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--object-store-memory=200000000", "--disable-usage-stats"]

    def ray_cli(*args):
        proc = subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"ray {' '.join(args)} failed:\n{proc.stderr[-2000:]}"

    ray = pytest.importorskip("ray")  # a dev dependency; the core package never imports it
    temp_dir = tempfile.mkdtemp(prefix="cdkd-ray-")  # short: Ray's unix socket paths live under it
    common.append(f"--temp-dir={temp_dir}")
    try:
        ray_cli("start", "--head", f"--port={port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}", '--resources={"head": 1}', *common)
        ray_cli("start", f"--address=127.0.0.1:{port}", '--resources={"node2": 1}', *common)
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "env": env}
    finally:
        ray.shutdown()
        kill_processes_of(temp_dir, port)  # not `ray stop --force`: that kills every Ray instance on the machine
        shutil.rmtree(temp_dir, ignore_errors=True)


def kill_processes_of(temp_dir: str, gcs_port: int = 0) -> None:
    """SIGKILL the processes whose command line names `temp_dir` (GCS, raylets, dashboard, log monitors), the
    head's Ray client server (it names only the GCS address `...:gcs_port`, on the machine's own IP even for a
    loopback cluster) and all their descendants (workers, agents): exactly the cluster this session started."""
    parent, roots = {}, set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                parent[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        client = gcs_port and "ray.util.client.server" in cmdline and f":{gcs_port}\0" in cmdline.replace(" ", "\0")
        if (temp_dir in cmdline or client) and int(pid) != os.getpid():
            roots.add(int(pid))
    doomed, grew = set(roots), True
    while grew:
        children = {pid for pid, ppid in parent.items() if ppid in doomed} - doomed
        doomed |= children
        grew = bool(children)
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tiny_config(teacher_paths: list[str], run_dir: str = "", **sections) -> dict:
    """A small, fast distillation config over the given teachers (no real data needed)."""
    cfg = {"teachers": [{"path": p} for p in teacher_paths], "run_dir": run_dir,
           "model": {"student": "mfs_lenet5_half", "nz": 16, "ngf": 8},
           "train": {"iterations": 4, "batch_size": 16, "student_steps": 2, "log_every": 2, "ckpt_every": 2,
                     "sample_every": 2, "amp": "none"},
           "probe": {"samples": 64, "steps": 4, "snapshots": 2, "batch_size": 16}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def write_yaml(path, obj) -> str:
    """Write `obj` as a YAML file (configs, search spaces); returns the path as a string."""
    with open(path, "w") as f:
        yaml.safe_dump(obj, f)
    return str(path)


def exported_agreement(run_dir: str, probe_path: str = "") -> float:
    """Top-1 agreement of a run's exported student with the teachers' mean on its probe set (`probe_path`, else
    the run's own probe.pt), computed here from the files alone (not with cdkd's probe helpers): what the run's
    `probe_agreement` must equal."""
    probe = torch.load(probe_path or os.path.join(run_dir, "probe.pt"), map_location="cpu", weights_only=True)
    student = torch.export.load(os.path.join(run_dir, "student.pt2")).module()
    with torch.no_grad():
        s = torch.cat([student(x) for x in probe["x"].split(64)])
    return (s.argmax(1) == probe["teacher_logits"].mean(0).argmax(1)).double().mean().item()
