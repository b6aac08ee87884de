"""The data-free selection metric: a fixed, reproducible probe set, and agreement with the teacher ensemble."""
import os

import pytest
import torch
import torch.nn as nn

from cdkd.config import make_config
from cdkd.errors import CdkdError
from cdkd.probe import build_probe, ensure_probe, probe_metrics
from cdkd.teacher_pool import TeacherGroup
from cdkd.teachers import load_teacher
from cdkd.trainer import build, train
from tests.conftest import exported_agreement, tiny_config


@pytest.fixture
def setup(teacher_paths, tmp_path):
    cfg = make_config(tiny_config(teacher_paths, str(tmp_path / "run")))
    pool = TeacherGroup([load_teacher(t) for t in cfg.teachers])
    return cfg, pool


class Oracle(nn.Module):
    """A 'student' whose headers are the teachers themselves: it agrees with the ensemble everywhere."""

    def __init__(self, pool: TeacherGroup) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x):
        return self.pool.logits(x)


def test_probe_set_is_reproducible_and_leaves_the_rng_alone(setup):
    cfg, pool = setup
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    a = build_probe(pool, 10, (1, 32, 32), cfg)
    assert torch.equal(torch.rand(3), expected)  # the run's own random stream is not shifted by the probe
    b = build_probe(pool, 10, (1, 32, 32), cfg)
    assert a["x"].shape == (cfg.probe.samples, 1, 32, 32) and torch.equal(a["x"], b["x"])
    assert a["teacher_logits"].shape == (3, cfg.probe.samples, 10)
    assert torch.equal(a["teacher_logits"], pool.logits(a["x"]))


def test_probe_metrics(setup):
    cfg, pool = setup
    probe = build_probe(pool, 10, (1, 32, 32), cfg)
    oracle = probe_metrics(Oracle(pool), probe)
    assert oracle["probe_agreement"] == 1.0 and oracle["probe_tv"] < 1e-6
    constant = nn.Module()
    constant.forward = lambda x: torch.nn.functional.one_hot(torch.full((x.shape[0],), 3), 10).float()[None] * 50
    m = probe_metrics(constant, probe)
    share = (probe["teacher_logits"].mean(0).argmax(-1) == 3).float().mean().item()
    assert m["probe_agreement"] == pytest.approx(share) and m["probe_tv"] > 0.3


def test_every_run_reports_the_metric_and_a_bad_probe_file_is_a_clear_error(teacher_paths, tmp_path):
    cfg = make_config(tiny_config(teacher_paths, str(tmp_path / "run")))
    result = train(build(cfg, with_data=False))
    assert result["probe_agreement"] == pytest.approx(exported_agreement(str(tmp_path / "run")), abs=1e-6)
    assert result["probe_tv"] >= 0.0
    assert os.path.exists(tmp_path / "run" / "probe.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a probe")
    cfg = make_config(tiny_config(teacher_paths, str(tmp_path / "run2"), probe={"path": str(bad)}))
    run = build(cfg, with_data=False)
    with pytest.raises(CdkdError, match="probe file .*bad.pt is unreadable"):
        ensure_probe(run.distiller.pool, 10, (1, 32, 32), cfg)


def test_probe_built_for_other_teachers_is_refused(teacher_paths, tmp_path):
    """The probe file carries a fingerprint of the teachers (names + weights); another teacher set is refused."""
    probe_file = str(tmp_path / "shared-probe.pt")
    cfg = make_config(tiny_config(teacher_paths, str(tmp_path / "a"), probe={"path": probe_file}))
    result = train(build(cfg, with_data=False))
    assert result["probe_build_s"] > 0
    same = build(make_config(tiny_config(teacher_paths, str(tmp_path / "b"), probe={"path": probe_file})),
                 with_data=False)
    probe, built = ensure_probe(same.distiller.pool, 10, (1, 32, 32), same.cfg)
    assert not built and probe["teachers"] == same.distiller.pool.fingerprint
    other = build(make_config(tiny_config(teacher_paths[::-1], str(tmp_path / "c"), probe={"path": probe_file})),
                  with_data=False)
    with pytest.raises(CdkdError, match="probe file .* was built for other teachers"):
        ensure_probe(other.distiller.pool, 10, (1, 32, 32), other.cfg)
