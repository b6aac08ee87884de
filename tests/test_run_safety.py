"""A run directory belongs to one run; Ctrl-C / SIGTERM checkpoint and exit 130 / 143; resume checks what it
continues (metrics complete, checkpoint readable, same teachers); out of memory is one line."""
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from cdkd.checkpoint import load_run_checkpoint
from cdkd.config import make_config
from cdkd.errors import CdkdError
from cdkd.interrupt import Interrupted
from cdkd.metrics import read_metrics
from cdkd.resume import Resume
from cdkd.runlock import holder
from cdkd.trainer import build, train
from tests.conftest import REPO, tiny_config, write_yaml
from tests.test_bad_inputs import job

JOB = os.path.join(REPO, "jobs", "cdfkd_mfs.py")
PROGRESS = re.compile(r"\[cdfkd_mfs\] (\d+)/")


def job_config(tmp_path, teacher_paths, **train):
    cfg = tiny_config(teacher_paths, str(tmp_path / "run"),
                      train={"iterations": 100000, "log_every": 1, "ckpt_every": 100000, "sample_every": 100000,
                             **train})
    cfg.update(data={"name": "mnist", "download": False}, aggregation={"num_samples": 0})
    return write_yaml(tmp_path / "cfg.yaml", cfg)


def start_job(tmp_path, config, data_root, *extra):
    """The job as users run it (engine in-process), its stdout read line by line on a thread."""
    err = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen([sys.executable, JOB, "--config", config, "--data-dir", data_root,
                             "--distributed.workers=0", *extra], stdout=subprocess.PIPE, stderr=err, text=True,
                            cwd=tmp_path)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)],
                     daemon=True).start()
    return proc, lines


def next_progress(lines, timeout=180):
    """The iteration of the next progress line on the job's stdout."""
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        assert line is not None, "the job ended before printing progress"
        m = PROGRESS.search(line)
        if m:
            return int(m.group(1))


def wait_for(predicate, timeout=180):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def stderr_of(tmp_path):
    return (tmp_path / "stderr.txt").read_text()


def stop_job(proc, lines, sig, timeout=180, again=False, progress_timeout=180) -> int:
    """Send `sig` after the job's first progress line (with `again`, a second one after the next progress
    line) and return its exit code; the job is killed if it is still running afterwards."""
    try:
        next_progress(lines, progress_timeout)
        proc.send_signal(sig)
        if again:
            next_progress(lines)  # the first is being handled (the iteration in progress finished): now a second
            if proc.poll() is None:
                proc.send_signal(sig)
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_second_run_on_a_run_directory_is_refused_with_the_pid(tmp_path, teacher_paths, data_root, capsys):
    config = job_config(tmp_path, teacher_paths, budget_s=10.0)  # the first run ends on its time budget
    first, _ = start_job(tmp_path, config, data_root)
    try:
        wait_for(lambda: f"pid {first.pid} " in holder(str(tmp_path / "run")) or first.poll() is not None)
        assert first.poll() is None, stderr_of(tmp_path)
        assert job.main(["--config", config, "--data-dir", data_root, "--distributed.workers=0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"is in use by another run (pid {first.pid} on host" in err[0], err
        assert job.main(["--config", config, "--data-dir", data_root, "--distributed.workers=0", "--resume"]) == 2
        assert f"(pid {first.pid} on host" in capsys.readouterr().err  # --resume as well (once it has a checkpoint)
        assert first.wait(timeout=300) == 0, stderr_of(tmp_path)
    finally:
        if first.poll() is None:
            first.kill()
    run = tmp_path / "run"
    assert (run / "result.json").exists() and "time budget" in json.loads((run / "result.json").read_text())["stopped"]
    rows = read_metrics(str(run / "metrics")).to_pydict()["iteration"]
    assert rows == list(range(1, len(rows) + 1))
    assert holder(str(run)) == ""  # released: the next run may take it


def test_sigint_checkpoints_exits_130_and_resume_continues(tmp_path, teacher_paths, data_root, capsys):
    config = job_config(tmp_path, teacher_paths)
    proc, lines = start_job(tmp_path, config, data_root)
    assert stop_job(proc, lines, signal.SIGINT) == 130
    err = stderr_of(tmp_path)
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    assert last.startswith("interrupted: interrupted by SIGINT at iteration ") and str(ckpt) in last, last
    assert f"--run_dir={tmp_path / 'run'} --resume" in last
    k = load_run_checkpoint(str(ckpt))["engine"]["step"]
    assert f"at iteration {k};" in last
    end = k + 3
    assert job.main(["--config", config, "--data-dir", data_root, "--distributed.workers=0", "--resume",
                     f"--train.iterations={end}"]) == 0
    assert f"resumed {tmp_path / 'run'} at iteration {k}" in capsys.readouterr().out
    assert read_metrics(str(tmp_path / "run" / "metrics")).to_pydict()["iteration"] == list(range(1, end + 1))


def test_two_quick_sigints_exit_130_without_a_traceback(tmp_path, teacher_paths, data_root):
    proc, lines = start_job(tmp_path, job_config(tmp_path, teacher_paths), data_root)
    assert stop_job(proc, lines, signal.SIGINT, again=True) == 130
    err = stderr_of(tmp_path)
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted: "), err


def signalling_run(teacher_paths, run_dir, at, *signums, **train):
    """A tiny in-process run whose iteration `at` sends this process `signums` (as a user's Ctrl-C would)."""
    cfg = make_config(tiny_config(teacher_paths, str(run_dir), train={"iterations": 6, "ckpt_every": 1, **train}))
    run = build(cfg, with_data=False)
    step = run.distiller.train_iteration

    def iteration():
        if run.distiller.step == at - 1:
            for s in signums:
                os.kill(os.getpid(), s)
        return step()
    run.distiller.train_iteration = iteration
    return run


def test_sigterm_in_process_checkpoints_and_restores_the_handlers(tmp_path, teacher_paths):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match="interrupted by SIGTERM at iteration 3; checkpoint written") as e:
        train(signalling_run(teacher_paths, tmp_path / "run", 3, signal.SIGTERM))
    assert e.value.exit_code == 143
    assert load_run_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.pt"))["engine"]["step"] == 3
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_second_sigint_stops_at_once(tmp_path, teacher_paths):
    before = signal.getsignal(signal.SIGINT)  # (an earlier in-process Ray Train run may have left its own)
    with pytest.raises(Interrupted, match="second SIGINT: stopped at once.*at iteration 2.*--resume") as e:
        train(signalling_run(teacher_paths, tmp_path / "run", 3, signal.SIGINT, signal.SIGINT))
    assert e.value.exit_code == 130
    assert load_run_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.pt"))["engine"]["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before


def crashed_run(teacher_paths, run_dir, crash_at=3, ckpt_every=2):
    """A run that crashed in iteration crash_at + 1 (its last checkpoint at a multiple of ckpt_every)."""
    cfg = make_config(tiny_config(teacher_paths, str(run_dir), train={"ckpt_every": ckpt_every}))
    run = build(cfg, with_data=False)
    step = run.distiller.train_iteration

    def crashing():
        if run.distiller.step == crash_at:
            raise RuntimeError("simulated crash")
        return step()
    run.distiller.train_iteration = crashing
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(run)


def resumed(teacher_paths, run_dir, resume=True):
    return train(build(make_config(tiny_config(teacher_paths, str(run_dir))), with_data=False), resume=resume)


def test_resume_after_the_metrics_were_deleted(tmp_path, teacher_paths):
    run_dir = tmp_path / "run"
    crashed_run(teacher_paths, run_dir)  # checkpoint at 2
    shutil.rmtree(run_dir / "metrics")
    with pytest.raises(CdkdError, match=r"metrics in .* do not match the checkpoint at iteration 2 \(missing "
                                        r"iterations 1-2\); pass --resume-allow-gaps"):
        resumed(teacher_paths, run_dir)
    assert resumed(teacher_paths, run_dir, Resume(allow_gaps=True))["iterations"] == 4
    rows = read_metrics(str(run_dir / "metrics")).to_pydict()
    assert rows["iteration"] == [3, 4] and rows["resume_gap"] == [2.0, None]
    record = [json.loads(line) for line in (run_dir / "resumes.jsonl").read_text().splitlines()][-1]
    assert record["iteration"] == 2 and record["missing_iterations"] == [[1, 2]]


def test_resume_refuses_a_duplicated_metrics_row(tmp_path, teacher_paths):
    run_dir = tmp_path / "run"
    crashed_run(teacher_paths, run_dir)
    part = next((run_dir / "metrics").glob("part-*.parquet"))
    shutil.copy(part, run_dir / "metrics" / "part-00000000-00000001.parquet")  # rows 1, 2 once more
    with pytest.raises(CdkdError, match="duplicated iterations 1, 2"):
        resumed(teacher_paths, run_dir)


def test_truncated_newest_checkpoint_names_the_older_good_one(tmp_path, teacher_paths):
    run_dir = tmp_path / "run"
    crashed_run(teacher_paths, run_dir, crash_at=3, ckpt_every=1)  # last.pt at 3, prev.pt at 2
    last, prev = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "prev.pt"
    assert load_run_checkpoint(str(prev))["engine"]["step"] == 2
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CdkdError, match=rf"newest checkpoint {re.escape(str(last))}: cannot read run checkpoint .*"
                                        rf"older good checkpoint exists: {re.escape(str(prev))} \(iteration 2\); "
                                        "pass --resume-from-good"):
        resumed(teacher_paths, run_dir)
    assert resumed(teacher_paths, run_dir, Resume(from_good=True))["iterations"] == 4
    assert read_metrics(str(run_dir / "metrics")).to_pydict()["iteration"] == [1, 2, 3, 4]
    prev.write_bytes(b"")
    last.write_bytes(b"")
    with pytest.raises(CdkdError, match="cannot be read either; start a new run_dir"):
        resumed(teacher_paths, run_dir, Resume(from_good=True))


def test_resume_refuses_changed_teacher_files(tmp_path, teacher_paths):
    teachers = [str(shutil.copy(p, tmp_path / os.path.basename(p))) for p in teacher_paths]
    run_dir = tmp_path / "run"
    crashed_run(teachers, run_dir)
    shutil.copy(teacher_paths[0], teachers[1])  # teacher 1's file now holds teacher 0's weights
    with pytest.raises(CdkdError, match=rf"the teachers changed since the run started \(fingerprint \w+ -> \w+: "
                                        rf"teacher 1 \({re.escape(str(teachers[1]))}\) has other weights"):
        resumed(teachers, run_dir)


def test_out_of_memory_is_one_line(tmp_path, teacher_paths, monkeypatch):
    cfg = make_config(tiny_config(teacher_paths, str(tmp_path / "run")))
    run = build(cfg, with_data=False)

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has ...")
    run.distiller.train_iteration = oom
    with pytest.raises(CdkdError, match=r"out of memory in the first iteration \(train.batch_size=16, .*it needed "
                                        r"2.00 GiB\); lower train.batch_size"):
        train(run)
    import cdkd.trainer

    def no_memory(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 40000000000000 bytes. Error code 12")
    monkeypatch.setattr(cdkd.trainer, "create_model", no_memory)
    with pytest.raises(CdkdError, match=r"out of memory while building the run \(train.batch_size=16, "
                                        r".*it needed 37252.90 GiB"):
        build(cfg, with_data=False)


def test_a_sweep_directory_in_use_is_refused_with_the_pid(tmp_path, teacher_paths):
    pytest.importorskip("ray")
    from cdkd.distributed.sweep import SweepSettings, run_sweep
    sweep_dir = str(tmp_path / "sweep")
    code = "import sys; from cdkd.runlock import run_lock\nwith run_lock(sys.argv[1], 'sweep'):\n    sys.stdin.read()"
    other = subprocess.Popen([sys.executable, "-c", code, sweep_dir], stdin=subprocess.PIPE, cwd=REPO)
    try:
        wait_for(lambda: f"pid {other.pid} " in holder(sweep_dir))
        settings = SweepSettings(sweep_dir=sweep_dir, base=tiny_config(teacher_paths),
                                 space={"loss.w_bn": {"uniform": [0.01, 1.0]}}, num_samples=1)
        with pytest.raises(CdkdError, match=f"is in use by another sweep \\(pid {other.pid} on host"):
            run_sweep(settings)
    finally:
        other.communicate(b"", timeout=60)
    assert holder(sweep_dir) == ""
