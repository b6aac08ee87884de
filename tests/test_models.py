import pytest
import torch

from cdkd.errors import ConfigError
from cdkd.models import create_model, list_models, num_params
from cdkd.models.students import SingleHeadStudent

CLASSIFIERS = {"lenet5": (1, 32), "lenet5_half": (1, 32), "resnet18": (3, 32), "resnet34": (3, 32),
               "wrn_16_1": (3, 32), "wrn_16_2": (3, 32), "wrn_40_2": (3, 32)}
STUDENTS = {"mfs_lenet5_half": (1, 32), "mh_lenet5_half": (1, 32), "mfs_resnet18": (3, 32), "smh_resnet18": (3, 32),
            "mfs_wrn_16_1": (3, 32), "mfs_wrn_16_2": (3, 32)}
GENERATORS = {"generator32": {"img_size": 32}, "cond_generator32": {"img_size": 32}, "generator_large": {"img_size": 64},
              "cond_generator_large": {"img_size": 128}, "generator_zskt": {"img_size": 32}}


TIMM_STUDENTS = {"mfs_timm", "mfs_timm_small"}  # 64-224 px students, tested in test_mfs_backbone.py
SEGMENTERS = {"lraspp_mbv3_large": {}, "lraspp_mbv3_small": {"width_mult": 0.5},
              "mh_lraspp_mbv3_small": {"num_headers": 2, "width_mult": 0.5}}


def test_registry_covers_all_tested_models():
    assert set(list_models()) == set(CLASSIFIERS) | set(STUDENTS) | set(GENERATORS) | TIMM_STUDENTS | set(SEGMENTERS)


@pytest.mark.parametrize("name", sorted(SEGMENTERS))
def test_segmenters_label_every_pixel_at_any_size(name):
    """Dense models answer per-pixel logits at the input's own size (odd sizes too: no size is assumed)."""
    m = create_model(name, num_classes=11, **SEGMENTERS[name]).eval()
    x = torch.randn(2, 3, 45, 61)
    with torch.no_grad():
        out = m(x)
        stages = m.forward_features(x)[0] if hasattr(m, "forward_features") else m.outputs(x)[0]
    headers = SEGMENTERS[name].get("num_headers")
    assert out.shape == ((headers,) if headers else ()) + (2, 11, 45, 61)
    assert [a.shape[1] for a in stages] == [i["num_chs"] for i in m.feature_info]


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_classifier_shapes_and_interface(name):
    c, s = CLASSIFIERS[name]
    kwargs = {"width": 8} if name.startswith("resnet") else {}
    m = create_model(name, num_classes=7, in_chans=c, **kwargs).eval()
    x = torch.randn(2, c, s, s)
    stages, pooled = m.forward_features(x)
    assert pooled.shape == (2, m.feature_dim)
    assert all(a.shape[0] == 2 and a.dim() == 4 for a in stages)
    assert torch.equal(m(x), m.forward_head(pooled)) and m(x).shape == (2, 7)
    assert_feature_info(m, stages, s)


def assert_feature_info(m, stages, size):
    """timm's feature_info: one entry per stage map, with its channels, stride and an existing module name."""
    assert len(m.feature_info) == len(stages)
    modules = dict(m.named_modules())
    for info, a in zip(m.feature_info, stages):
        assert info["num_chs"] == a.shape[1]
        assert round(size / a.shape[-1]) == info["reduction"]
        assert info["module"] in modules, info


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_multi_header_student_shapes(name):
    c, s = STUDENTS[name]
    kwargs = {"width": 8} if "resnet" in name else {}
    m = create_model(name, num_classes=5, num_headers=4, in_chans=c, **kwargs).eval()
    x = torch.randn(3, c, s, s)
    stages, feats = m.forward_features(x)
    assert feats.shape == (4, 3, m.feature_dim)
    assert m(x).shape == (4, 3, 5)
    assert torch.equal(m(x), m.forward_head(feats))
    assert_feature_info(m, stages, s)


def test_headers_are_independent():
    m = create_model("mfs_lenet5_half", num_headers=3)
    assert m.headers[0].classifier.weight.data_ptr() != m.headers[1].classifier.weight.data_ptr()
    m.eval()
    out = m(torch.randn(4, 1, 32, 32))
    assert not torch.allclose(out[0], out[1])


def test_mfs_resnet18_taps_all_levels():
    """Spec 2.2a encoder channels: 64->128, 256->256, 512->512, 1024->512."""
    m = create_model("mfs_resnet18", num_classes=100)
    pw = [enc.body[-3] for enc in m.headers[0].encoders]
    assert [(p.in_channels, p.out_channels) for p in pw] == [(64, 128), (256, 256), (512, 512), (1024, 512)]


def test_student_budget_against_ensemble():
    """The benchmark students have at most 1/8 of the parameters of their three teachers."""
    assert num_params(create_model("mfs_lenet5_half")) * 8 <= 3 * num_params(create_model("lenet5"))
    assert num_params(create_model("mfs_wrn_16_1")) * 8 <= 3 * num_params(create_model("wrn_16_2"))


def test_mfs_wrn_taps_all_levels():
    """Spec 2.2c: encoders ch0->ch1, 2ch1->ch2, 2ch2->ch2 to 16, 8, 4 px; 4x4 pool -> ch2-d feature."""
    m = create_model("mfs_wrn_16_2", num_classes=10)
    pw = [enc.body[-3] for enc in m.headers[0].encoders]
    assert [(p.in_channels, p.out_channels) for p in pw] == [(32, 64), (128, 128), (256, 128)]
    assert m.feature_dim == 128


def test_training_only_feature_projection():
    """A projection to the teachers' width feeds the feature loss only: logits and deployed size unchanged."""
    m = create_model("mfs_wrn_16_1", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    before, n = m(x), m.deployed_params()
    m.project_features_to([128, 512, None])  # header k to its own teacher's width (None: no teacher feature)
    _, feats, logits = m(x, features=True)
    assert [tuple(f.shape) for f in feats] == [(2, 128), (2, 512), (2, 64)] and torch.equal(logits, before)
    assert m.deployed_params() == n < num_params(m)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators(name):
    kwargs = dict(nz=16, ngf=8, nc=3, **GENERATORS[name])
    g = create_model(name, **kwargs)
    z = torch.randn(4, 16)
    y = torch.tensor([0, 1, 2, 3]) if name.startswith("cond") else None
    x = g(z, y)
    size = GENERATORS[name]["img_size"]
    assert x.shape == (4, 3, size, size)
    if name in ("generator32", "generator_zskt"):  # last BN without affine: each channel zero mean, unit variance over the batch
        assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)


@pytest.mark.parametrize("name,size", [("generator32", (28, 28)), ("generator32", (48, 64)), ("generator32", (30, 42)),
                                       ("generator_large", (96, 128)), ("generator_large", (224, 224)),
                                       ("generator_large", (180, 240)), ("generator_zskt", (28, 28)),
                                       ("generator_zskt", (30, 42))])
def test_generators_make_any_size(name, size):
    """Non-square and sizes the upsampling factor does not divide: the output is cropped to exactly H x W."""
    g = create_model(name, nz=8, ngf=4, nc=3, img_size=size)
    assert g(torch.randn(2, 8)).shape == (2, 3, *size)


def test_auto_generator_by_size_and_labels():
    from cdkd.models.generators import pick_generator
    assert pick_generator("auto", (1, 32, 32), False) == "generator32"
    assert pick_generator("auto", (3, 64, 64), True) == "cond_generator32"
    assert pick_generator("auto", (3, 64, 96), False) == "generator_large"
    assert pick_generator("auto", (3, 224, 224), True) == "cond_generator_large"
    assert pick_generator("generator32", (3, 224, 224), False) == "generator32"  # an explicit name is kept


def test_conditional_generator_needs_labels():
    g = create_model("cond_generator32", nz=8, ngf=4, num_classes=10)
    with pytest.raises(ValueError, match="labels"):
        g(torch.randn(2, 8))


def test_single_head_wrapper():
    m = SingleHeadStudent(create_model("lenet5_half")).eval()
    assert m(torch.randn(2, 1, 32, 32)).shape == (1, 2, 10)


def test_unknown_model_suggests():
    with pytest.raises(ConfigError, match="did you mean.*lenet5"):
        create_model("lenet6")


def test_depthwise_conv_runs_in_fp32_under_cpu_autocast():
    """SepConv's depthwise layers keep fp32 under bf16 autocast on the CPU (the slow bf16 backward), with the
    parameters and values of a plain grouped nn.Conv2d."""
    from cdkd.models.students import DepthwiseConv2d
    dw = DepthwiseConv2d(8, 3, 2, 1)
    ref = torch.nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False)
    ref.load_state_dict(dw.state_dict())  # same keys and shapes
    x = torch.randn(2, 8, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = dw(x.to(torch.bfloat16))
        y_plain = ref(x)
    assert y.dtype == torch.float32 and y_plain.dtype == torch.bfloat16
    assert torch.allclose(y, ref(x.to(torch.bfloat16).float()), atol=1e-6)
