"""Teachers from the libraries users have (torchvision, timm, their own class, torch.export), their input spaces,
and the one-line errors of each kind."""
import os
import sys

import pytest
import timm
import torch
import torch.nn as nn
import torchvision

from cdkd.config import TeacherSpec
from cdkd.errors import TeacherError
from cdkd.losses import feature_l1
from cdkd.teachers import InputNorm, load_teacher, validate_teachers

USER_MODULE = '''
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))


def broken(**kwargs):
    raise KeyError("no such variant")


def segmenter():
    class Seg(nn.Module):
        def forward(self, x):
            return {"out": x}
    return Seg()
'''


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    (tmp_path / "usernets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "usernets"
    sys.modules.pop("usernets", None)


def test_torchvision_teacher_gives_logits_pooled_feature_and_bn_prior(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "r18.pt"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)  # wrapped + prefixed
    t = load_teacher(TeacherSpec(path=str(path), kind="torchvision", arch="resnet18", kwargs={"num_classes": 10}))
    x = torch.randn(2, 3, 64, 64)
    out = t(x, bn_stats=True)
    assert torch.allclose(out.logits, model(x), atol=1e-5)
    # the pooled feature is the input of the last Linear: the classifier's own input, so fc(pooled) = logits
    assert out.pooled.shape == (2, 512) and torch.allclose(model.fc(out.pooled), out.logits, atol=1e-5)
    assert len(out.bn_terms) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 20


def test_whole_pickled_model_needs_the_opt_in_that_says_it_runs_code(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(torchvision.models.resnet18(num_classes=10), path)
    spec = TeacherSpec(path=str(path), kind="torchvision", arch="resnet18", kwargs={"num_classes": 10})
    with pytest.raises(TeacherError, match="run_pickled_code: true"):
        load_teacher(spec)
    spec.run_pickled_code = True
    assert load_teacher(spec)(torch.randn(1, 3, 64, 64)).logits.shape == (1, 10)


def test_timm_teacher_reads_ema_keys_prefixes_and_its_pretrained_cfg(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=10).eval()
    path = tmp_path / "t.pth"
    torch.save({"state_dict_ema": {f"module.{k}": v for k, v in model.state_dict().items()},
                "state_dict": {k: torch.zeros_like(v) for k, v in model.state_dict().items()}}, path)
    t = load_teacher(TeacherSpec(path=str(path), kind="timm", arch="resnet10t", kwargs={"num_classes": 10}))
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(t(x).logits, model(x), atol=1e-5)  # the EMA weights, not the zeroed ones
    cfg = model.pretrained_cfg
    assert t.norm == InputNorm(tuple(cfg["mean"]), tuple(cfg["std"])) and not t.strict_shape
    assert t.input_shape == tuple(cfg["input_size"])


def test_python_kind_builds_the_users_class(tmp_path, user_module):
    from usernets import Net
    torch.manual_seed(0)
    net = Net(width=6).eval()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    t = load_teacher(TeacherSpec(path=str(tmp_path / "net.pt"), kind="python", factory="usernets:Net",
                                 kwargs={"width": 6}, input_shape=[3, 40, 56]))
    x = torch.randn(3, 3, 40, 56)
    out = t(x, bn_stats=True)
    assert torch.allclose(out.logits, net(x), atol=1e-6) and out.pooled.shape == (3, 6) and len(out.bn_terms) == 1
    assert validate_teachers([t]) == (10, (3, 40, 56))


def test_export_teacher_is_logits_only_and_says_so(tmp_path, capsys):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=5).eval()
    program = torch.export.export(net, (torch.randn(2, 3, 48, 48),),
                                  dynamic_shapes=({0: torch.export.Dim("b", min=1, max=1024)},))
    torch.export.save(program, str(tmp_path / "t.pt2"))
    t = load_teacher(TeacherSpec(path=str(tmp_path / "t.pt2"), kind="export"))
    assert t.input_shape == (3, 48, 48) and t.strict_shape
    x = torch.randn(4, 3, 48, 48)
    out = t(x, bn_stats=True)
    assert torch.allclose(out.logits, net(x), atol=1e-5) and out.pooled is None and out.bn_terms == []
    warning = capsys.readouterr().out.strip().splitlines()
    assert len(warning) == 1 and "feature loss, BN-statistics prior" in warning[0] and "t.pt2" in warning[0]


def test_input_space_maps_each_teacher_to_its_own_normalisation(tmp_path, user_module):
    """Generator inputs x are normalised by the space (m0, s0); teacher k must see (pixel - m_k) / s_k."""
    from usernets import Net
    torch.save(Net().state_dict(), tmp_path / "net.pt")
    spec = lambda m, s: TeacherSpec(path=str(tmp_path / "net.pt"), kind="python", factory="usernets:Net",  # noqa
                                    input_shape=[3, 8, 8], mean=m, std=s)
    a = load_teacher(spec([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]))
    b = load_teacher(spec([0.1, 0.2, 0.3], [0.2, 0.25, 0.5]))
    validate_teachers([a, b])  # the space: a's normalisation, the first declared
    seen = []
    b.model.model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    pixels = torch.rand(2, 3, 8, 8)
    b((pixels - 0.5) / 0.5)
    mk, sk = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.5]).view(1, 3, 1, 1)
    assert torch.allclose(seen[0], (pixels - mk) / sk, atol=1e-5)
    assert a.in_scale is None  # the space's own teacher: no map at all


def test_mixed_width_feature_loss_is_normalised_per_width():
    """Each teacher's summed-over-D term is rescaled to the mean width: equal per-element error, equal weight."""
    fs = [torch.zeros(4, 64), torch.zeros(4, 512)]
    ft = [torch.full((4, 64), 0.5), torch.full((4, 512), 0.5)]
    # raw sums: 32 and 256; rescaled to D_mean = 288: 32 * 288/64 = 144 and 256 * 288/512 = 144
    assert feature_l1(fs, ft).item() == pytest.approx(144.0)
    same = torch.randn(3, 4, 16)
    other = torch.randn(3, 4, 16)  # one width: exactly spec 2.3's mean over K and B of the sum over D
    assert torch.allclose(feature_l1(same, other), (same - other).abs().sum(-1).mean())
    assert feature_l1([fs[0], fs[1]], [ft[0], None]).item() == pytest.approx(32.0)  # no feature: left out


@pytest.mark.parametrize("case,expected", [
    ("unknown_kind", r"unknown kind 'keras'"),
    ("directory", r"is a directory"),
    ("bad_factory", r"factory 'usernets' must look like 'package.module:callable'"),
    ("missing_module", r"cannot import 'no_such_pkg'"),
    ("factory_raises", r"teacher 'n.pt': cannot build usernets:broken \(KeyError"),
    ("key_mismatch", r"weights do not match torchvision model 'resnet18': (size mismatch|.*missing)"),
    ("bad_arch", r"teacher 'n.pt': cannot build torchvision model 'resnet_nope'"),
    ("timm_bad_arch", r"teacher 'n.pt': cannot build timm model 'nope_net'"),
    ("dict_output", r"teacher 'n.pt' returns dict; a teacher must return logits \(B, C\)"),
])
def test_bad_teachers_get_one_line_naming_them(tmp_path, user_module, case, expected):
    from usernets import Net
    torch.save(Net().state_dict(), tmp_path / "n.pt")
    path = str(tmp_path / "n.pt")
    specs = {"unknown_kind": TeacherSpec(path=path, kind="keras"),
             "directory": TeacherSpec(path=str(tmp_path), kind="torchvision", arch="resnet18"),
             "bad_factory": TeacherSpec(path=path, kind="python", factory="usernets"),
             "missing_module": TeacherSpec(path=path, kind="python", factory="no_such_pkg:Net"),
             "factory_raises": TeacherSpec(path=path, kind="python", factory="usernets:broken"),
             "key_mismatch": TeacherSpec(path=path, kind="torchvision", arch="resnet18"),
             "bad_arch": TeacherSpec(path=path, kind="torchvision", arch="resnet_nope"),
             "timm_bad_arch": TeacherSpec(path=path, kind="timm", arch="nope_net"),
             "dict_output": TeacherSpec(path=path, kind="python", factory="usernets:segmenter",
                                        input_shape=[3, 8, 8], run_pickled_code=False)}
    if case == "dict_output":
        torch.save({}, tmp_path / "n.pt")  # a module with no weights: an empty state dict loads
    with pytest.raises(TeacherError, match=expected) as e:
        validate_teachers([load_teacher(specs[case])])
    assert "\n" not in str(e.value)


def test_shape_and_class_mismatches_name_both_teachers(tmp_path, user_module):
    from usernets import Net
    torch.save(Net().state_dict(), tmp_path / "a.pt")
    torch.save(Net(num_classes=7).state_dict(), tmp_path / "b.pt")
    spec = lambda p, shape, **kw: TeacherSpec(path=str(tmp_path / p), kind="python", factory="usernets:Net",  # noqa
                                              input_shape=shape, kwargs=kw)
    a, b = load_teacher(spec("a.pt", [3, 8, 8])), load_teacher(spec("b.pt", [3, 8, 8], num_classes=7))
    with pytest.raises(TeacherError, match="'b.pt' predicts 7 classes but 'a.pt' predicts 10"):
        validate_teachers([a, b])
    c = load_teacher(spec("a.pt", [3, 16, 16]))
    c.name = "c"
    with pytest.raises(TeacherError, match=r"teacher 'c' expects input \(3, 16, 16\) but teacher 'a.pt' is"):
        validate_teachers([a, c])


def test_the_same_teacher_twice_is_a_warning(tmp_path, user_module, capsys):
    from usernets import Net
    torch.save(Net().state_dict(), tmp_path / "a.pt")
    spec = TeacherSpec(path=str(tmp_path / "a.pt"), kind="python", factory="usernets:Net", input_shape=[3, 8, 8])
    validate_teachers([load_teacher(spec), load_teacher(spec)])
    assert "identical weights" in capsys.readouterr().out
    assert os.path.exists(spec.path)
