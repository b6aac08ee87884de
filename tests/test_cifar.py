"""The CIFAR tier, small: WRN teachers -> mfs_wrn_16_1 end to end, and the feature loss whenever w_feat > 0."""
import pytest

from cdkd.config import make_config
from cdkd.errors import ConfigError
from cdkd.trainer import build, train
from tests.conftest import exported_agreement, random_teachers, tiny_config


@pytest.fixture(scope="module")
def wrn_teachers(tmp_path_factory):
    """Three randomly initialised WRN-16-2 CIFAR teachers (different seeds) as cdkd checkpoints."""
    return random_teachers(tmp_path_factory.mktemp("wrn"), "wrn_16_2", (3, 32, 32))


def test_cifar_shaped_distillation_end_to_end(wrn_teachers, tmp_path):
    """3 iterations, 3 WRN-16-2 teachers -> mfs_wrn_16_1 with the feature L1 through its 64->128 projection."""
    cfg = make_config(tiny_config(wrn_teachers, str(tmp_path / "run"), model={"student": "mfs_wrn_16_1"},
                                  train={"iterations": 3, "ckpt_every": 3}))
    run = build(cfg, with_data=False)
    d = run.distiller
    assert d.use_feat and d.student.feature_proj[0].out_features == 128
    assert run.info["student_params"] * 8 <= run.info["teacher_params"]
    logs = d.train_iteration()
    assert logs["s_feat"] > 0
    result = train(run)  # iterations 2 and 3 follow the one above
    assert result["iterations"] == 3
    assert result["probe_agreement"] == pytest.approx(exported_agreement(run.cfg.run_dir), abs=1e-6)


@pytest.mark.parametrize("student", ["mfs_lenet5_half", "mh_lenet5_half", "lenet5_half"])
def test_feature_loss_runs_whenever_w_feat_is_positive(teacher_paths, student):
    """LeNet-5 teachers have 84-d features, the students 24/42/42-d: a projection makes the L1 run, always."""
    cfg = make_config(tiny_config(teacher_paths, method="cdfkd_mfs", model={"student": student},
                                  loss={"w_feat": 0.2}))
    d = build(cfg, with_data=False).distiller
    batches = [d.student_batch() for _ in range(2)]
    logs = d.student_step(*batches[0], d.pool.targets(batches[0][0]).result())
    assert d.use_feat and logs["s_feat"] > 0
    off = build(make_config(tiny_config(teacher_paths, model={"student": student}, loss={"w_feat": 0.0})),
                with_data=False).distiller
    assert not off.use_feat and getattr(off.student, "feature_proj", None) is None


def test_unknown_student_kwargs_is_one_line(teacher_paths):
    cfg = make_config(tiny_config(teacher_paths, model={"student_kwargs": {"widht": 8}}))
    with pytest.raises(ConfigError, match="model.student_kwargs: 'mfs_lenet5_half' takes no 'widht'"):
        build(cfg, with_data=False)


def test_cifar_bench_keeps_each_presets_own_loop_settings():
    """bench/cifar.py's settings fill in what a preset leaves open and never override what it sets."""
    from bench.cifar import CIFAR_DISTILL, bench_settings
    assert bench_settings("cdfkd_mfs") == CIFAR_DISTILL  # its preset sets only the schedule
    mad = make_config({**bench_settings("mad"), "method": "mad"})
    assert (mad.train.batch_size, mad.train.student_steps, mad.model.nz, mad.train.loop) == (128, 10, 100, "abm")
    assert mad.model.ngf == CIFAR_DISTILL["model"]["ngf"]  # unset by the preset: the bench's
    ddad = make_config({**bench_settings("ddad"), "method": "ddad"})
    assert (ddad.train.batch_size, ddad.train.student_steps, ddad.optim.momentum) == (64, 5, 0.0)
    assert ddad.optim.milestones == [0.2, 0.4]


@pytest.mark.parametrize("name", ["mfs_resnet18", "mfs_wrn_16_1"])
def test_encoder_health_watches_each_headers_last_relu(name):
    """bench/encoder_health.py reads the BN and ReLU that end each header's last encoder (the one that dies)."""
    import torch
    from bench.encoder_health import last_encoders
    from cdkd.models import create_model
    student = create_model(name, num_classes=10)
    pairs = last_encoders(student)
    assert len(pairs) == student.num_headers == 3
    seen = []
    for k, (bn, relu) in enumerate(pairs):
        assert isinstance(bn, torch.nn.BatchNorm2d) and isinstance(relu, torch.nn.ReLU)
        relu.register_forward_hook(lambda m, i, o, k=k: seen.append((k, o.shape[1], bool((o >= 0).all()))))
    student(torch.randn(2, 3, 32, 32))
    width = student.headers[0].classifier.in_features
    assert seen == [(0, width, True), (1, width, True), (2, width, True)]
