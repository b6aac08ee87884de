import os
import secrets

# Ray reads its auth settings once per process, so they are set here, before any test module imports ray:
# token authentication (Ray's default for clusters) with one fresh token for every process of the session.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

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


@pytest.fixture(scope="session")
def teacher_paths(tmp_path_factory) -> list[str]:
    """Three randomly initialised LeNet-5 teachers (different seeds) as cdkd checkpoints."""
    d = tmp_path_factory.mktemp("teachers")
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        path = str(d / f"lenet5-{seed}.pt")
        save_classifier(path, create_model("lenet5"), "lenet5", {"num_classes": 10, "in_chans": 1}, (1, 32, 32))
        paths.append(path)
    return paths


def tiny_config(teacher_paths: list[str], run_dir: str = "", **sections) -> dict:
    """A small, fast distillation config over the given teachers (no real data needed)."""
    cfg = {"teachers": [{"path": p} for p in teacher_paths], "run_dir": run_dir,
           "model": {"student": "mfs_lenet5_half", "nz": 16, "ngf": 8},
           "train": {"iterations": 4, "batch_size": 16, "student_steps": 2, "log_every": 2, "ckpt_every": 2,
                     "sample_every": 2, "amp": "none"}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg
