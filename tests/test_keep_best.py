"""train.keep_best: the reported and exported student is the checkpoint with the best held-out metric (never test),
and the choice survives a resume."""
import pytest
import torch

from cdkd.config import make_config
from cdkd.errors import ConfigError
from cdkd.metrics import read_metrics
from cdkd.probe import probe_metrics
from cdkd.trainer import build, keep_if_best, train
from tests.conftest import tiny_config


def config(teacher_paths, run_dir, **train_kw):
    return make_config(tiny_config(teacher_paths, str(run_dir), method="ddad",
                                   train={"iterations": 6, "ckpt_every": 1, "keep_best": "probe", **train_kw},
                                   optim={"student_lr": 0.5}))


def test_the_best_probe_checkpoint_is_reported_and_exported(tmp_path, teacher_paths):
    run = build(config(teacher_paths, tmp_path / "run"), with_data=False)
    result = train(run)
    rows = read_metrics(str(tmp_path / "run" / "metrics")).to_pydict()
    curve = dict(zip(rows["iteration"], rows["probe_agreement"]))
    best_it = max(curve, key=lambda i: (curve[i], -i))  # the first iteration reaching the maximum
    assert best_it != 6, f"the test needs a curve whose best is not its last iteration: {curve}"
    assert result["selected"] == {"on": "probe_agreement", "iteration": best_it, "value": round(curve[best_it], 4)}
    # the result's probe figure is recomputed on the selected student, and the exported program is that student
    assert result["probe_agreement"] == pytest.approx(curve[best_it], abs=1e-6)
    exported = torch.export.load(result["exported_student"]).module()
    x = run.probe["x"][:8]
    with torch.no_grad():
        run.distiller.student.eval()
        assert torch.allclose(exported(x), run.distiller.student(x).mean(0), atol=1e-5)
    assert probe_metrics(run.distiller.student, run.probe, torch.device("cpu"), run.task)["probe_agreement"] \
        == pytest.approx(curve[best_it], abs=1e-6)


def test_keep_if_best_takes_strict_improvements_only():
    s = torch.nn.Linear(2, 2)
    best = keep_if_best(None, {"val_miou": 0.3}, 1, s, "val", "miou")
    assert best["iteration"] == 1 and best["on"] == "val_miou"
    with torch.no_grad():
        s.weight.add_(1.0)
    assert keep_if_best(best, {"val_miou": 0.3}, 2, s, "val", "miou")["iteration"] == 1  # a tie keeps the first
    assert keep_if_best(best, {"val_miou": float("nan")}, 3, s, "val", "miou")["iteration"] == 1
    new = keep_if_best(best, {"val_miou": 0.4}, 4, s, "val", "miou")
    assert new["iteration"] == 4 and torch.equal(new["student"]["weight"], s.weight)
    assert not torch.equal(best["student"]["weight"], s.weight)  # a copy, not the live tensor
    assert keep_if_best(None, {"val_miou": 0.9}, 1, s, "none", "miou") is None


def test_keep_best_needs_its_metric(teacher_paths, tmp_path):
    with pytest.raises(ConfigError, match="keep_best=val needs probe.val_samples"):
        make_config(tiny_config(teacher_paths, str(tmp_path), train={"keep_best": "val"}))
    with pytest.raises(ConfigError, match="keep_best=probe needs probe.samples"):
        make_config(tiny_config(teacher_paths, str(tmp_path), train={"keep_best": "probe"}, probe={"samples": 0}))


def test_the_best_survives_a_resume(tmp_path, teacher_paths):
    ref = train(build(config(teacher_paths, tmp_path / "ref"), with_data=False))
    run = build(config(teacher_paths, tmp_path / "cut"), with_data=False)
    step = run.distiller.train_iteration

    def crashing():
        if run.distiller.step == 4:
            raise RuntimeError("simulated crash")
        return step()
    run.distiller.train_iteration = crashing
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(run)
    resumed = train(build(config(teacher_paths, tmp_path / "cut"), with_data=False), resume=True)
    assert resumed["selected"] == ref["selected"]
