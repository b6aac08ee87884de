"""Bad input gets one clear line and a non-zero exit before any training (the job as users run it)."""
import os
import subprocess
import sys

import pytest

from cdkd.models import create_model
from cdkd.teachers import save_classifier
from tests.conftest import REPO, write_yaml

JOB = os.path.join(REPO, "jobs", "cdfkd_mfs.py")


def run_job(*args, cwd):
    return subprocess.run([sys.executable, JOB, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def write_config(tmp_path, teacher_paths, **extra):
    cfg = {"teachers": [{"path": p} for p in teacher_paths], "data": {"name": "mnist", "download": False},
           "train": {"iterations": 2, "batch_size": 8},
           "probe": {"samples": 64, "steps": 4, "snapshots": 2, "batch_size": 16}, **extra}
    return write_yaml(tmp_path / "cfg.yaml", cfg)


def assert_one_line_error(proc, pattern):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert pattern in lines[0], lines[0]


def test_missing_dataset_path(tmp_path, teacher_paths):
    proc = run_job("--config", write_config(tmp_path, teacher_paths), "--data-dir", str(tmp_path / "nodata"),
                   cwd=tmp_path)
    assert_one_line_error(proc, f"MNIST not found under {tmp_path / 'nodata'}")


@pytest.mark.parametrize("override,pattern", [
    ("--method=dfad", "unknown method 'dfad'"),
    ("--train.batch_size=0", "train.batch_size must be positive"),
    ("--model.student=mfs_lenet6", "unknown model 'mfs_lenet6'"),
])
def test_bad_config_values(tmp_path, teacher_paths, data_root, override, pattern):
    proc = run_job("--config", write_config(tmp_path, teacher_paths), "--data-dir", data_root, override, cwd=tmp_path)
    assert_one_line_error(proc, pattern)


def test_teacher_problems(tmp_path, teacher_paths, data_root):
    odd = tmp_path / "ten_vs_seven.pt"
    save_classifier(str(odd), create_model("lenet5", num_classes=7), "lenet5", {"num_classes": 7}, (1, 32, 32))
    proc = run_job("--config", write_config(tmp_path, [*teacher_paths[:2], str(odd)]), "--data-dir", data_root,
                   cwd=tmp_path)
    assert_one_line_error(proc, "'ten_vs_seven.pt' predicts 7 classes")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    proc = run_job("--config", write_config(tmp_path, [str(corrupt)]), "--data-dir", data_root, cwd=tmp_path)
    assert_one_line_error(proc, "cannot read checkpoint")


def test_job_runs_and_reports(tmp_path, teacher_paths, data_root):
    proc = run_job("--config", write_config(tmp_path, teacher_paths, run_dir=str(tmp_path / "run")),
                   "--data-dir", data_root, "--model.ngf=8", "--train.log_every=1", "--distributed.workers=0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "student (mean of headers)" in proc.stdout and "[cdfkd_mfs] 2/2" in proc.stdout
    assert os.path.exists(tmp_path / "run" / "student.pt2")
    assert "Ray instance" not in proc.stderr  # workers 0, teachers local: the engine here, no Ray started
