"""SIGTERM to the driver of a Ray Train run (what `ray job stop` sends): the workers checkpoint and stop, the
driver exits 143 with one line. The job joins the session's test cluster through RAY_ADDRESS."""
import glob
import os
import signal

import pytest

from cdkd.runlock import holder
from tests.test_run_safety import job_config, start_job, stderr_of, stop_job

pytest.importorskip("ray")


def test_sigterm_to_the_ray_driver_checkpoints_in_the_workers(ray_cluster, tmp_path, teacher_paths, data_root,
                                                               monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster["address"])  # the session's cluster: one Ray instance only
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc, lines = start_job(tmp_path, job_config(tmp_path, teacher_paths), data_root, "--distributed.workers=1")
    # the driver alone, as `ray job stop` does on a cluster
    assert stop_job(proc, lines, signal.SIGTERM, timeout=300, progress_timeout=300) == 143, stderr_of(tmp_path)
    err = stderr_of(tmp_path)
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: interrupted by SIGTERM: the workers checkpointed at iteration "), last
    assert "--resume" in last
    run = tmp_path / "run"
    assert glob.glob(str(run / "checkpoint_*" / "last.pt"))
    assert not (run / ".stop").exists() and holder(str(run)) == ""
