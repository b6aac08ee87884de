"""Speed settings that must not change the computation (issue 21, item 6): teachers and student in
channels_last for colour images, one teacher forward over all student batches of an iteration."""
import importlib
from pathlib import Path

import pytest
import torch

from cdkd.config import make_config
from cdkd.engine import models_channels_last
from cdkd.trainer import build
from tests.conftest import random_teachers, tiny_config
from tests.test_generator_split import split_vs_reference


@pytest.fixture(scope="module")
def colour_teachers(tmp_path_factory) -> list[str]:
    return random_teachers(tmp_path_factory.mktemp("wrn"), "wrn_16_2", (3, 32, 32))


def colour_run(paths, **train):
    cfg = make_config(tiny_config(paths, model={"student": "mfs_wrn_16_1", "nz": 32, "ngf": 8},
                                  train={"batch_size": 8, **train}))
    return build(cfg, with_data=False).distiller


def test_channels_last_rule():
    """fp32 student and teachers go channels_last for colour images only; bf16 everywhere always; never if off."""
    def rule(shape, **train):
        return models_channels_last(make_config({"train": {"amp": "none", **train}}), shape)
    assert rule((3, 32, 32)) and not rule((1, 28, 28))
    assert rule((1, 28, 28), amp="bf16", amp_scope="all")
    assert not rule((3, 32, 32), channels_last=False)


def test_colour_run_is_channels_last_and_answers_as_nchw(colour_teachers):
    """The layout is what runs, and it changes no answer: targets and the teachers' input gradient match NCHW."""
    fast, plain = colour_run(colour_teachers), colour_run(colour_teachers, channels_last=False)
    for model, nchw in ((fast.teachers[0], plain.teachers[0]), (fast.student, plain.student)):
        w, w0 = (next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d)).weight for net in (model, nchw))
        assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() and w0.is_contiguous()
    x, _ = fast.draw(fast.generator)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    x = torch.randn(8, 3, 32, 32)
    a, b = fast.pool.targets(x).result(), plain.pool.targets(x).result()
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    s = torch.randn(3, 8, 10)
    ga, _ = fast.pool.generator_side(x, None).backward(s).result()
    gb, _ = plain.pool.generator_side(x, None).backward(s).result()
    assert ga.abs().max() > 1e-6 and torch.allclose(ga, gb, atol=1e-6)


def test_split_gradient_holds_channels_last(colour_teachers):
    """The split generator gradient (spec 7.2) still equals plain autograd at 1e-5 with the channels_last layout."""
    d = colour_run(colour_teachers)
    assert d.channels_last
    d.train_iteration()
    diff, scale = split_vs_reference(d, d.cfg.loss, 8)
    assert diff <= 1e-5 and scale > 1e-4, (diff, scale)


def test_batched_targets_change_nothing(colour_teachers):
    """One iteration with one teacher forward over all student batches gives the student and generator that one
    forward per batch gives (same seed), to float tolerance."""
    runs = [colour_run(colour_teachers, batched_targets=b, student_steps=3) for b in (True, False)]
    for d in runs:
        torch.manual_seed(1)
        d.train_iteration()
    for name in ("student", "generator"):
        a, b = (dict(getattr(d, name).named_parameters()) for d in runs)
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_teacher_compile_falls_back_to_eager(teacher_paths, monkeypatch, capsys):
    """`train.compile: teachers` where compiling fails (no C++ compiler, say): one line, then the eager answers."""
    cfg = make_config(tiny_config(teacher_paths, train={"compile": "teachers"}))
    d = build(cfg, with_data=False).distiller
    x = torch.randn(4, *d.pool.input_shape)
    want = torch.stack([t(x).logits for t in d.teachers])

    def broken(model, **kwargs):
        def run(*a, **k):
            raise RuntimeError("InductorError: no working C++ compiler\nmore")
        return run
    monkeypatch.setattr(torch, "compile", broken)
    got = d.pool.targets(x).result()
    assert torch.allclose(got.logits, want, atol=1e-6)
    assert "torch.compile of the teachers failed (RuntimeError: InductorError: no working C++ compiler); " \
           "running them eagerly" in capsys.readouterr().out
    assert not d.pool.spec.compile


def test_step_time_variants_are_the_layouts_they_name(monkeypatch):
    """bench/step_time.py's "before" variants run as the engine did before issue 21 (NCHW student and teachers,
    per-batch targets), "after" as now; each completes an iteration of the paper setting (small batch)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "bench"))
    step_time = importlib.import_module("step_time")
    before = step_time.paper_run("paper-cifar100", 4, step_time.BEFORE["before_fp32"])
    step_time.nchw_models(before.distiller)
    after = step_time.paper_run("paper-cifar100", 4, ["--train.amp=none"])
    for run, cl in ((before, False), (after, True)):
        d = run.distiller
        w = next(m for m in d.teachers[0].modules() if isinstance(m, torch.nn.Conv2d)).weight
        s = next(m for m in d.student.modules() if isinstance(m, torch.nn.Conv2d)).weight
        assert d.channels_last == cl and d.pool.spec.channels_last == cl
        assert w.is_contiguous(memory_format=torch.channels_last) == cl and w.is_contiguous() != cl
        assert s.is_contiguous(memory_format=torch.channels_last) == cl and s.is_contiguous() != cl
        assert not run.cfg.train.batched_targets
        assert set(d.train_iteration()) >= {"loss_s", "loss_g"}
