import pytest
import yaml

from cdkd.config import PRESETS, load_config, make_config
from cdkd.errors import ConfigError


def test_presets_are_configurations_of_one_config():
    assert make_config({}).method == "cdfkd_mfs"
    mad = make_config({"method": "mad"})
    assert mad.train.ema and mad.loss.adv_loss == "kl" and mad.train.loop == "abm"
    assert make_config({"method": "mad_dfad"}).train.loop == "dfad" == make_config({}).train.loop
    cgdd = make_config({"method": "cgdd"})
    assert cgdd.model.generator == "auto" and cgdd.loss.w_ce_gen == 1.0 and cgdd.loss.w_at == 250.0  # auto: conditional
    assert set(PRESETS) == {"cdfkd_mfs", "ddad", "mad", "mad_dfad", "cgdd"}


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"method": "ddad", "train": {"batch_size": 32, "iterations": 7}}))
    cfg = load_config(str(path), ["--train.batch_size=64", "--loss.w_bn=0.5", "--optim.milestones=[0.5]"])
    assert (cfg.method, cfg.train.batch_size, cfg.train.iterations) == ("ddad", 64, 7)
    assert cfg.loss.w_bn == 0.5 and cfg.optim.milestones == [0.5]
    assert cfg.loss.w_ens == 0.0  # from the ddad preset


def test_yaml_round_trip(tmp_path):
    cfg = make_config({"method": "cgdd", "teachers": [{"path": "a.pt"}, {"path": "b.pt", "kind": "torchscript"}]})
    path = tmp_path / "round.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(str(path)).to_dict() == cfg.to_dict()


def test_int_accepted_for_float():
    assert make_config({}, ["--loss.w_bn=1"]).loss.w_bn == 1.0


@pytest.mark.parametrize("override,message", [
    ("--train.batch_size=0", "batch_size must be positive"),
    ("--train.batch_size=-3", "batch_size must be positive"),
    ("--train.bach_size=3", "did you mean 'batch_size'"),
    ("--method=dfad", "unknown method 'dfad'"),
    ("--loss.w_bn='x'", "expected float"),
    ("--loss.w_bn=-1.0", "loss.w_bn must be >= 0"),
    ("--train.amp=fp8", "choose one of"),
    ("--train.ema_momentum=1.5", "ema_momentum"),
    ("--train.iterations=2.5", "expected int"),
    ("train.batch_size", "--section.key=value"),
    ("--distributed.workers=-1", "distributed.workers must be >= 0"),
    ("--distributed.teacher_pool=gpu", "choose one of local, ray"),
    ("--distributed.placement=RANDOM", "choose one of PACK"),
    ("--distributed.sync_bn=true", "sync_bn needs distributed.use_gpu=true"),
    ("--loss.w_bn=.nan", r"loss.w_bn=nan: must be a finite number"),      # NaN passes every range comparison
    ("--optim.student_lr=.inf", r"optim.student_lr=inf: must be a finite number"),
    ("--probe.w_bn=-.inf", r"probe.w_bn=-inf: must be a finite number"),
    ("--data.name=cifar1000", "choose one of none, mnist, cifar10, cifar100"),
])
def test_bad_values_raise(override, message):
    with pytest.raises(ConfigError, match=message):
        make_config({}, [override])


def test_bad_teacher_entries():
    with pytest.raises(ConfigError, match="teachers\\[0\\].kind"):
        make_config({"teachers": [{"path": "x", "kind": "onnx"}]})
    with pytest.raises(ConfigError, match="needs arch"):
        make_config({"teachers": [{"path": "x", "kind": "timm"}]})
    with pytest.raises(ConfigError, match="unknown config key teachers\\[0\\].'pth'"):
        make_config({"teachers": [{"pth": "x"}]})


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(str(bad))


def test_fp16_needs_a_gpu():
    with pytest.raises(ConfigError, match="train.amp=fp16 needs a GPU"):
        make_config({}, ["--train.amp=fp16", "--train.device=cpu"])


def test_core_never_imports_ray():
    """`import cdkd` must work where Ray is absent (the GPU machine, torchrun): only cdkd/distributed imports it."""
    import ast
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1] / "cdkd"
    offenders = []
    for path in root.rglob("*.py"):
        if "distributed" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            offenders += [f"{path.name}: {n}" for n in names if n == "ray" or n.startswith("ray.")]
    assert not offenders, offenders


def test_amp_scope_auto_follows_the_device(monkeypatch):
    """`auto` runs everything in bf16 where bf16 convolutions are fast (CUDA, AMX CPUs), else the generator only;
    the built run records the concrete value."""
    import torch

    from cdkd import trainer
    for native in (True, False):  # CUDA: what the device reports (no GPU needed here)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, v=native: v)
        assert trainer.fast_bf16(torch.device("cuda")) is native
    cfg = make_config({}, ["--train.amp_scope=auto"])
    monkeypatch.setattr(trainer, "fast_bf16", lambda device: True)
    assert trainer.resolve_auto(cfg, torch.device("cpu")).train.amp_scope == "all"
    assert cfg.train.amp_scope == "auto"  # the caller's config is not changed
    assert trainer.resolve_auto(make_config({}, ["--train.amp_scope=auto", "--train.amp=none"]),
                                torch.device("cpu")).train.amp_scope == "generator"
    monkeypatch.setattr(trainer, "fast_bf16", lambda device: False)
    assert trainer.resolve_auto(cfg, torch.device("cpu")).train.amp_scope == "generator"
