import pytest
import timm
import torch

from cdkd.config import TeacherSpec
from cdkd.errors import TeacherError
from cdkd.models import create_model
from cdkd.teachers import load_teacher, save_classifier, validate_teachers


def test_cdkd_teacher_is_frozen_and_exposes_everything(teacher_paths):
    t = load_teacher(TeacherSpec(path=teacher_paths[0]))
    t.train()  # stays in eval mode regardless
    assert not t.training and not t.model.training
    assert all(not p.requires_grad for p in t.parameters())
    x = torch.randn(4, 1, 32, 32, requires_grad=True)
    out = t(x, bn_stats=True)
    assert out.logits.shape == (4, 10) and out.pooled.shape == (4, 84)
    assert [a.shape[-1] for a in out.stages] == [14, 5, 1]
    assert len(out.bn_terms) == 3 and all(r.item() > 0 for r in out.bn_terms)
    assert t(x).bn_terms == []  # hooks collect only when asked: stateless between calls
    out.logits.sum().backward()
    assert x.grad is not None and all(p.grad is None for p in t.parameters())


def test_timm_teacher(tmp_path):
    model = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    path = tmp_path / "timm.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    t = load_teacher(TeacherSpec(path=str(path), kind="timm", arch="resnet10t", kwargs={"num_classes": 10},
                                 input_shape=[3, 32, 32]))
    out = t(torch.randn(2, 3, 32, 32), bn_stats=True)
    model.eval()
    assert out.logits.shape == (2, 10) and out.pooled.shape == (2, model.num_features)
    assert len(out.stages) >= 4 and len(out.bn_terms) > 5
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(t(x).logits, model(x), atol=1e-5)


def test_torchscript_teacher(tmp_path):
    model = create_model("lenet5").eval()
    path = tmp_path / "t.ts"
    torch.jit.script(model).save(str(path))
    t = load_teacher(TeacherSpec(path=str(path), kind="torchscript", input_shape=[1, 32, 32]))
    x = torch.randn(3, 1, 32, 32)
    assert torch.allclose(t(x).logits, model(x), atol=1e-6)
    assert validate_teachers([t]) == (10, (1, 32, 32))


def test_class_count_mismatch_names_the_teacher(tmp_path, teacher_paths):
    odd = tmp_path / "odd.pt"
    save_classifier(str(odd), create_model("lenet5", num_classes=7), "lenet5", {"num_classes": 7}, (1, 32, 32))
    teachers = [load_teacher(TeacherSpec(path=p)) for p in teacher_paths[:2]]
    teachers.append(load_teacher(TeacherSpec(path=str(odd), name="odd-one")))
    with pytest.raises(TeacherError, match="'odd-one' predicts 7 classes but .* predicts 10"):
        validate_teachers(teachers)


def test_input_shape_mismatch(tmp_path, teacher_paths):
    rgb = tmp_path / "rgb.pt"
    save_classifier(str(rgb), create_model("lenet5", in_chans=3), "lenet5", {"in_chans": 3}, (3, 32, 32))
    teachers = [load_teacher(TeacherSpec(path=teacher_paths[0])), load_teacher(TeacherSpec(path=str(rgb)))]
    with pytest.raises(TeacherError, match=r"'rgb.pt' expects input \(3, 32, 32\)"):
        validate_teachers(teachers)


def test_bad_checkpoints(tmp_path, teacher_paths):
    with pytest.raises(TeacherError, match="not found"):
        load_teacher(TeacherSpec(path=str(tmp_path / "missing.pt")))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(open(teacher_paths[0], "rb").read()[:500])
    with pytest.raises(TeacherError, match="cannot read checkpoint"):
        load_teacher(TeacherSpec(path=str(corrupt)))
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": 1}, foreign)
    with pytest.raises(TeacherError, match="not a cdkd classifier checkpoint"):
        load_teacher(TeacherSpec(path=str(foreign)))
    mismatched = tmp_path / "mismatched.pt"
    ckpt = torch.load(teacher_paths[0], weights_only=True)
    ckpt["arch"] = "lenet5_half"
    torch.save(ckpt, mismatched)
    with pytest.raises(TeacherError, match="do not match architecture 'lenet5_half'"):
        load_teacher(TeacherSpec(path=str(mismatched)))
