"""MFS students on timm backbones (cdkd/models/mfs_backbone.py) for 64-224 px inputs."""
import pytest
import torch
import torchvision

from cdkd.checkpoint import export_student, load_exported
from cdkd.models import create_model, list_models, num_params

SIZES = [(64, 64), (96, 128), (224, 224), (97, 131)]  # (97, 131): odd sizes, the levels do not halve exactly


@pytest.fixture(scope="module")
def default():
    torch.manual_seed(0)
    return create_model("mfs_timm", num_classes=10, num_headers=3).eval()


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return create_model("mfs_timm_small", num_classes=100, num_headers=3).eval()


def test_registered():
    assert {"mfs_timm", "mfs_timm_small"} <= set(list_models())


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("which", ["default", "small"])
def test_shapes_and_feature_info(which, size, request):
    m = request.getfixturevalue(which)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        stages, feats = m.forward_features(x)
        logits = m(x)
    assert feats.shape == (3, 2, m.feature_dim)
    assert logits.shape == (3, 2, m.num_classes)
    assert torch.equal(logits, m.forward_head(feats))
    modules = dict(m.named_modules())
    assert len(m.feature_info) == len(stages)
    for info, a in zip(m.feature_info, stages):
        assert info["num_chs"] == a.shape[1] and info["module"] in modules, info
        assert -(-size[0] // info["reduction"]) == a.shape[-2] and -(-size[1] // info["reduction"]) == a.shape[-1]


def test_mismatched_levels_are_fitted():
    """ConvNeXt's 2x2 stride-2 downsampling floors (108 px: levels 13, 6, 3) while the stride-2 encoder ceils
    (13 -> 7): the encoder output is pooled to the next level's size before the concatenation."""
    m = create_model("mfs_timm", backbone="convnext_atto", num_headers=2).eval()
    x = torch.randn(2, 3, 108, 100)
    with torch.no_grad():
        stages = m.trunk(x)
        assert [tuple(a.shape[-2:]) for a in stages] == [(13, 12), (6, 6), (3, 3)]
        assert m.headers[0].encoders[0](stages[0]).shape[-2:] == (7, 6)  # does not land on level 1's (6, 6)
        assert m(x).shape == (2, 2, 10)


def test_headers_are_distinct_modules(default):
    """No parameter is shared between headers or with the trunk, and changing header 0 changes only output 0."""
    m = create_model("mfs_timm", num_classes=10, num_headers=3).eval()
    ptrs = [{p.data_ptr() for p in h.parameters()} for h in m.headers]
    trunk = {p.data_ptr() for p in m.trunk.parameters()}
    for i, a in enumerate(ptrs):
        assert not a & trunk
        for b in ptrs[i + 1:]:
            assert not a & b
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = m(x)
        for p in m.headers[0].parameters():
            p.add_(0.05 * torch.randn_like(p))
        after = m(x)
    assert not torch.allclose(before[0], after[0])
    assert torch.equal(before[1:], after[1:])
    assert not torch.allclose(before[1], before[2])


def test_parameter_budget():
    """At most 1/4 of three torchvision ResNet-18s (3 x 11.18M / 4 = 8.39M), for 10 and 100 classes."""
    ensemble = 3 * num_params(torchvision.models.resnet18(num_classes=10))
    for name, kw in [("mfs_timm", {}), ("mfs_timm_small", {}), ("mfs_timm", {"backbone": "resnet18"})]:
        for c in (10, 100):
            assert 4 * num_params(create_model(name, num_classes=c, num_headers=3, **kw)) <= ensemble, (name, kw, c)
    assert num_params(create_model("mfs_timm_small")) < num_params(create_model("mfs_timm"))


@pytest.mark.parametrize("name", ["mfs_timm", "mfs_timm_small"])
def test_gradient_reaches_trunk_from_every_header(name):
    """Every header's loss alone reaches the first trunk layer; all parameters get gradients (DDP needs no
    unused-parameter search: the untapped backbone levels are not built)."""
    m = create_model(name, num_classes=10, num_headers=3).train()
    x = torch.randn(2, 3, 64, 64)
    first = next(p for p in m.trunk.parameters() if p.dim() == 4)
    for k in range(3):
        m.zero_grad(set_to_none=True)
        m(x)[k].logsumexp(-1).mean().backward()
        assert first.grad is not None and first.grad.abs().sum() > 0, k
        for j in range(3):  # (the stack passes zeros back to the other headers)
            got = [p.grad is not None and bool(p.grad.any()) for p in m.headers[j].parameters()]
            assert any(got) if j == k else not any(got), (k, j)
    m.zero_grad(set_to_none=True)
    m(x).logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_channels_last_and_bf16_autocast(small):
    x = torch.randn(4, 3, 96, 128)
    m = create_model("mfs_timm_small", num_classes=10).eval()
    with torch.no_grad():
        ref = m(x)
    m = m.to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(m(x.to(memory_format=torch.channels_last)), ref, atol=1e-4)
    m.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x.to(memory_format=torch.channels_last))
    assert out.shape == (3, 4, 10) and torch.isfinite(out).all()
    out.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_feature_projection_and_width():
    m = create_model("mfs_timm_small", num_classes=10, feature_dim=256).eval()
    assert m.feature_dim == 256
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = m(x)
    n = m.deployed_params()
    m.project_features_to([512, 64, 128])  # header k to its own teacher's width
    with torch.no_grad():
        _, feats, logits = m(x, features=True)
    assert [tuple(f.shape) for f in feats] == [(2, 512), (2, 64), (2, 128)] and torch.equal(logits, before)
    assert m.deployed_params() == n < num_params(m)


@pytest.mark.parametrize("which", ["default", "small"])
def test_export_with_dynamic_batch(which, request, tmp_path):
    """`export_student` (torch.export, dynamic batch) of the eval-mode student matches eager within 1e-5."""
    m = request.getfixturevalue(which)
    path = str(tmp_path / "student.pt2")
    export_student(m, None, (3, 96, 128), path)
    exported = load_exported(path)
    for b in (1, 5):
        x = torch.randn(b, 3, 96, 128)
        with torch.no_grad():
            want = m(x).mean(0)
            got = exported(x)
        assert got.shape == (b, m.num_classes)
        assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
