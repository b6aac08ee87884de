"""Run-level behaviour: resume equals an uninterrupted run, NaN stops cleanly, the export round-trips."""
import os
import subprocess
import sys

import pytest
import torch

from cdkd.checkpoint import AggregatedStudent, load_run_checkpoint
from cdkd.config import make_config
from cdkd.errors import CdkdError, NonFiniteLossError
from cdkd.metrics import read_metrics
from cdkd.trainer import build, train
from tests.conftest import exported_agreement, tiny_config


def run_to_end(teacher_paths, run_dir, method="cdfkd_mfs", crash_at=None, resume=False):
    cfg = make_config(tiny_config(teacher_paths, str(run_dir), method=method))
    run = build(cfg, with_data=False)
    if crash_at is not None:
        step = run.distiller.train_iteration

        def crashing():
            if run.distiller.step == crash_at:
                raise RuntimeError("simulated crash")
            return step()
        run.distiller.train_iteration = crashing
    return run, train(run, resume=resume)


@pytest.mark.parametrize("method", ["cdfkd_mfs", "mad", "mad_dfad"])  # mad: the ABM loop
def test_resume_matches_uninterrupted_run(tmp_path, teacher_paths, method):
    ref, _ = run_to_end(teacher_paths, tmp_path / "ref", method)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_to_end(teacher_paths, tmp_path / "cut", method, crash_at=3)  # checkpoint at 2, crash in 4th iteration
    assert load_run_checkpoint(str(tmp_path / "cut" / "checkpoints" / "last.pt"))["engine"]["step"] == 2
    resumed, _ = run_to_end(teacher_paths, tmp_path / "cut", method, resume=True)
    for name in ("student", "generator") + (("ema",) if ref.distiller.ema is not None else ()):
        a, b = getattr(ref.distiller, name).state_dict(), getattr(resumed.distiller, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    rows = read_metrics(str(tmp_path / "cut" / "metrics")).to_pydict()
    assert rows["iteration"] == [1, 2, 3, 4]
    assert rows["loss_s"] == read_metrics(str(tmp_path / "ref" / "metrics")).to_pydict()["loss_s"]


def test_existing_run_needs_resume(tmp_path, teacher_paths):
    run_to_end(teacher_paths, tmp_path / "r")
    with pytest.raises(CdkdError, match="--resume"):
        run_to_end(teacher_paths, tmp_path / "r")


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, teacher_paths):
    cfg = make_config(tiny_config(teacher_paths, str(tmp_path / "nan")))
    run = build(cfg, with_data=False)
    d, step = run.distiller, run.distiller.train_iteration

    def poisoned():
        if d.step == 2:
            with torch.no_grad():
                d.teachers[0].model.model.classifier.weight.fill_(float("nan"))
        return step()
    d.train_iteration = poisoned
    ckpt = tmp_path / "nan" / "checkpoints" / "last.pt"
    with pytest.raises(NonFiniteLossError, match="loss is nan at iteration 2.*last good checkpoint"):
        train(run)
    state = load_run_checkpoint(str(ckpt))
    assert state["engine"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["engine"]["student"].values() if v.is_floating_point())


def test_export_round_trip_without_cdkd(tmp_path, teacher_paths):
    run, result = run_to_end(teacher_paths, tmp_path / "exp")
    path = result["exported_student"]
    x = torch.randn(5, 1, 32, 32)
    run.distiller.student.eval()
    expected = AggregatedStudent(run.distiller.student)(x)
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch; m = torch.export.load(sys.argv[1]).module(); y = m(torch.load(sys.argv[2]));"
            "assert 'cdkd' not in sys.modules; torch.save(y, sys.argv[3])")
    subprocess.run([sys.executable, "-c", code, path, str(tmp_path / "x.pt"), str(tmp_path / "y.pt")], check=True,
                   cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert torch.allclose(torch.load(tmp_path / "y.pt"), expected, atol=1e-5)
    assert expected.shape == (5, 10)


def test_run_writes_samples_metrics_config(tmp_path, teacher_paths):
    run_to_end(teacher_paths, tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(os.listdir(out / "samples")) == ["iter_000002.png", "iter_000004.png"]
    assert (out / "config.yaml").exists() and (out / "result.json").exists()
    assert read_metrics(str(out / "metrics")).num_rows == 4


def test_metrics_parquet_keeps_every_logged_column(teacher_paths, tmp_path):
    """Rows differ in their keys (the probe metric only at checkpoints); the Parquet keeps every column."""
    run, _ = run_to_end(teacher_paths, tmp_path / "run")
    table = read_metrics(str(tmp_path / "run" / "metrics"))
    rows = table.to_pylist()
    assert "probe_agreement" in table.column_names and "probe_tv" in table.column_names
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["probe_agreement"] is None and rows[2]["probe_agreement"] is None
    # the last row's figure is the exported (last) student's agreement, recomputed from the files
    assert rows[3]["probe_agreement"] == pytest.approx(exported_agreement(str(tmp_path / "run")), abs=1e-6)


def test_wall_time_carries_across_resume(teacher_paths, tmp_path):
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_to_end(teacher_paths, tmp_path / "cut", crash_at=3)
    saved = load_run_checkpoint(str(tmp_path / "cut" / "checkpoints" / "last.pt"))["wall_s"]
    assert saved > 0
    _, result = run_to_end(teacher_paths, tmp_path / "cut", resume=True)
    assert result["distill_wall_s"] >= round(saved, 1)


def test_nan_stop_names_a_finite_checkpoint_that_resumes(teacher_paths, tmp_path):
    """A huge learning rate blows the run up; the checkpoint it names holds finite weights and resumes."""
    def cfg(lr):
        return make_config(tiny_config(teacher_paths, str(tmp_path / "run"), train={"iterations": 6, "ckpt_every": 1},
                                       optim={"student_lr": lr}))
    with pytest.raises(NonFiniteLossError, match="last good checkpoint: (.*last.pt)") as err:
        train(build(cfg(1e3), with_data=False))  # (1e3: iteration 1 is still finite, iteration 2 is not)
    path = str(err.value).split("last good checkpoint: ")[1].split(";")[0]
    state = load_run_checkpoint(path)
    assert all(torch.isfinite(v).all() for part in ("student", "generator")
               for v in state["engine"][part].values() if v.is_floating_point())
    result = train(build(cfg(0.05), with_data=False), resume=True)
    assert result["iterations"] == 6
    rows = read_metrics(str(tmp_path / "run" / "metrics")).to_pylist()
    assert all(torch.isfinite(torch.tensor(r["loss_s"])) for r in rows)


def test_weights_that_turn_non_finite_are_never_checkpointed(teacher_paths, tmp_path):
    cfg = make_config(tiny_config(teacher_paths, str(tmp_path / "run"), train={"iterations": 4, "ckpt_every": 2}))
    run = build(cfg, with_data=False)
    step = run.distiller.train_iteration

    def poisoned():
        logs = step()
        if run.distiller.step == 4:  # the step before the second checkpoint leaves an inf weight behind
            next(run.distiller.student.parameters()).data.fill_(float("inf"))
        return logs
    run.distiller.train_iteration = poisoned
    with pytest.raises(NonFiniteLossError, match="non-finite student or generator weights at iteration 4"):
        train(run)
    assert load_run_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.pt"))["engine"]["step"] == 2
