"""Every bad input a user can make gets one `error:` line and exit code 2 before any work: one table.

The job's `main` runs in this process (as `python jobs/cdfkd_mfs.py ...` would), with the engine in-process
(`--distributed.workers=0`), so the table is fast; `tests/test_jobs.py` checks the same through a subprocess.
"""
import importlib.util
import os
import shutil

import pytest
import torch

from tests.conftest import REPO, write_yaml

spec = importlib.util.spec_from_file_location("cdfkd_mfs_job", os.path.join(REPO, "jobs", "cdfkd_mfs.py"))
job = importlib.util.module_from_spec(spec)
spec.loader.exec_module(job)


def config_file(tmp_path, teachers, name="cfg.yaml", **extra):
    cfg = {"teachers": [{"path": p} for p in teachers], "data": {"name": "mnist", "download": False},
           "model": {"nz": 16, "ngf": 8}, "train": {"iterations": 2, "batch_size": 8, "ckpt_every": 1},
           "probe": {"samples": 32, "steps": 2, "snapshots": 1, "batch_size": 8}, **extra}
    return write_yaml(tmp_path / name, cfg)


def truncated_mnist(tmp_path, data_root):
    d = tmp_path / "data" / "mnist"
    d.mkdir(parents=True)
    for name in os.listdir(os.path.join(data_root, "mnist")):
        shutil.copy(os.path.join(data_root, "mnist", name), d / name)
    big = d / "train-images-idx3-ubyte.gz"
    big.write_bytes(big.read_bytes()[: 1 << 20])  # a download cut short
    return str(tmp_path / "data")


def case(tmp_path, teachers, data_root, name):
    """(argv, expected text in the one error line) for the row `name`."""
    good = config_file(tmp_path, teachers)
    run = ["--config", good, "--data-dir", data_root, "--distributed.workers=0", f"--run_dir={tmp_path / 'run'}"]
    if name == "truncated_gz":
        return ["--config", good, "--data-dir", truncated_mnist(tmp_path, data_root), "--distributed.workers=0"], \
            "train-images-idx3-ubyte.gz: cannot read"
    if name == "empty_teacher_file":
        (tmp_path / "empty.pt").write_bytes(b"")
        return [*run[:0], "--config", config_file(tmp_path, [str(tmp_path / "empty.pt")], "e.yaml"),
                *run[2:]], "empty.pt: cannot read checkpoint"
    if name == "teacher_missing_keys":
        torch.save({"format": "cdkd-classifier/1", "arch": "lenet5"}, tmp_path / "nokeys.pt")
        return ["--config", config_file(tmp_path, [str(tmp_path / "nokeys.pt")], "k.yaml"), *run[2:]], \
            "nokeys.pt: cdkd classifier checkpoint without kwargs, state_dict, input_shape"
    if name in ("yaml_list", "yaml_scalar"):
        (tmp_path / "bad.yaml").write_text("- a\n- b\n" if name == "yaml_list" else "42\n")
        return ["--config", str(tmp_path / "bad.yaml")], "expected a mapping of config sections"
    if name == "yaml_directory":
        return ["--config", str(tmp_path)], "is a directory"
    if name == "unknown_student_kwargs":
        return [*run, "--model.student_kwargs={'widht': 2}"], "takes no 'widht'"
    if name == "run_dir_under_a_file":
        (tmp_path / "afile").write_text("x")
        return [*run[:-1], f"--run_dir={tmp_path / 'afile' / 'run'}"], "is not writable"
    if name == "nan_config_value":
        return [*run, "--loss.w_bn=.nan"], "loss.w_bn=nan: must be a finite number"
    if name == "resume_without_checkpoint":
        return [*run, "--resume"], "no checkpoint in"
    if name == "missing_dataset":
        return ["--config", good, "--data-dir", str(tmp_path / "nodata"), "--distributed.workers=0"], \
            "MNIST not found under"
    raise KeyError(name)


ROWS = ["truncated_gz", "empty_teacher_file", "teacher_missing_keys", "yaml_list", "yaml_scalar", "yaml_directory",
        "unknown_student_kwargs", "run_dir_under_a_file", "nan_config_value", "resume_without_checkpoint",
        "missing_dataset"]


@pytest.mark.parametrize("name", ROWS)
def test_bad_input_is_one_line(tmp_path, teacher_paths, data_root, capsys, name):
    argv, expected = case(tmp_path, teacher_paths, data_root, name)
    assert job.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()  # no work was done


def test_resume_with_another_config_names_the_keys(tmp_path, teacher_paths, data_root, capsys):
    run = ["--config", config_file(tmp_path, teacher_paths), "--data-dir", data_root, "--distributed.workers=0",
           f"--run_dir={tmp_path / 'run'}", "--aggregation.num_samples=0"]
    assert job.main(run) == 0
    capsys.readouterr()
    assert job.main([*run, "--resume", "--method=mad", "--model.nz=32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config differs in method ('cdfkd_mfs' -> 'mad')" in err[0] and "model.nz (16 -> 32)" \
        in err[0], err
