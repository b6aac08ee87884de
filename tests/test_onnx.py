"""ONNX export matches PyTorch; `cdkd eval` on .pt2 and .onnx; a run writes student.onnx; `cdkd export` re-exports."""
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from cdkd.checkpoint import AggregatedStudent, export_student, load_exported
from cdkd.commands import main
from cdkd.config import make_config
from cdkd.data import load_imagefolder
from cdkd.models import create_model
from cdkd.models.students import as_student
from cdkd.trainer import build, train
from tests.conftest import tiny_config

ort = pytest.importorskip("onnxruntime")


def student(in_chans=1, num_classes=10, seed=0):
    torch.manual_seed(seed)
    model = as_student(create_model("mfs_lenet5_half", num_classes=num_classes, in_chans=in_chans, num_headers=3))
    for m in model.modules():  # non-trivial BN statistics, so eval-mode BN is really exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def onnx_logits(path, x):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


def test_onnx_equals_pytorch(tmp_path, caplog):
    s = student()
    caplog.set_level(logging.INFO)  # as in a Ray worker, whose console shows INFO
    written = export_student(s, None, (1, 32, 32), str(tmp_path / "student.pt2"))
    chatter = [r.getMessage() for r in caplog.records if r.name.startswith(("onnx_ir", "onnxscript"))]
    assert not chatter, chatter[:3]  # the exporter's pass-by-pass INFO lines ("Replaced initializer ...")
    assert written["onnx"] == str(tmp_path / "student.onnx") and written["onnx_exporter"] == "dynamo"
    x = torch.randn(7, 1, 32, 32)  # not the example's batch of 2: the batch axis is dynamic
    with torch.no_grad():
        ref = AggregatedStudent(s)(x)
        pt2 = load_exported(written["pt2"])(x)
    assert torch.allclose(onnx_logits(written["onnx"], x), ref, atol=1e-4)
    assert torch.allclose(pt2, ref, atol=1e-5)


def write_imagefolder(root, classes=("cat", "dog"), per_class=3, size=40):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            os.makedirs(root / split / c)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return str(root)


def eval_json(capsys, *argv):
    rc = main(["eval", *argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out.strip().splitlines()[-1]), out


def test_eval_imagefolder_pt2_and_onnx(tmp_path, capsys):
    data_dir = write_imagefolder(tmp_path / "images")
    s = student(in_chans=3, num_classes=2, seed=1)
    written = export_student(s, None, (3, 32, 32), str(tmp_path / "student.pt2"))
    test = load_imagefolder(data_dir, image_size=32).test  # the 40x40 PNGs resized to the student's 32x32
    x, y = torch.stack([test[i][0] for i in range(len(test))]), torch.tensor(test.targets)
    with torch.no_grad():
        expected = (AggregatedStudent(s)(x).argmax(-1) == y).float().mean().item()
    for path, fmt in ((written["pt2"], "pt2"), (written["onnx"], "onnx")):
        out, text = eval_json(capsys, path, "--dataset", "imagefolder", "--data-dir", data_dir, "--batch-size", "4")
        assert out["format"] == fmt and out["samples"] == 6 and out["accuracy"] == pytest.approx(expected)
        assert f"accuracy {expected:.4f}" in text


def test_eval_mnist(tmp_path, capsys, data_root):
    s = student()
    written = export_student(s, None, (1, 32, 32), str(tmp_path / "student.pt2"))
    out, _ = eval_json(capsys, written["onnx"], "--data-dir", data_root)
    from cdkd.data import load_data
    from cdkd.supervised import accuracy
    assert out["samples"] == 10000
    assert out["accuracy"] == pytest.approx(accuracy(AggregatedStudent(s), load_data("mnist", data_root).test),
                                            abs=1e-4)


def test_eval_bad_inputs(tmp_path, capsys, data_root):
    (tmp_path / "junk.pt2").write_bytes(b"not an export")
    rgb = export_student(student(in_chans=3), None, (3, 32, 32), str(tmp_path / "rgb.pt2"))
    for argv, text in [([str(tmp_path / "none.pt2")], "student file not found"),
                       ([str(tmp_path / "junk.pt2")], "cannot read exported student"),
                       ([str(tmp_path / "model.bin")], "expected an exported student, .pt2 or .onnx"),
                       ([rgb["pt2"], "--data-dir", data_root], "expects input (3, 32, 32) but the mnist test")]:
        rc = main(["eval", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and text in err[0], err


def test_run_writes_onnx_and_export_reexports(tmp_path, capsys, teacher_paths):
    run_dir = tmp_path / "run"
    result = train(build(make_config(tiny_config(teacher_paths, str(run_dir))), with_data=False))
    assert result["exported_onnx"] == str(run_dir / "student.onnx") and os.path.exists(result["exported_onnx"])
    rc = main(["export", str(run_dir), "--out", str(tmp_path / "again")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    again = json.loads(out.strip().splitlines()[-1])
    assert again["iteration"] == 4 and again["aggregation"] == "mean"
    x = torch.randn(5, 1, 32, 32)
    with torch.no_grad():
        ref = load_exported(result["exported_student"])(x)
        assert torch.allclose(load_exported(again["exported_student"])(x), ref, atol=1e-6)
    assert torch.allclose(onnx_logits(again["exported_onnx"], x), ref, atol=1e-4)
    rc = main(["export", str(tmp_path / "nothing")])
    assert rc == 2 and "run directory not found" in capsys.readouterr().err


def test_torchscript_exporter_is_the_fallback(tmp_path, monkeypatch):
    real = torch.onnx.export

    def no_dynamo(*args, **kwargs):
        if kwargs.get("dynamo"):
            raise RuntimeError("simulated: an operator the dynamo exporter cannot translate")
        return real(*args, **kwargs)
    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    s = student()
    written = export_student(s, None, (1, 32, 32), str(tmp_path / "student.pt2"))
    assert written["onnx_exporter"] == "torchscript"
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(onnx_logits(written["onnx"], x), AggregatedStudent(s)(x), atol=1e-4)


def test_onnx_failure_keeps_the_pt2(tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise RuntimeError("simulated")
    monkeypatch.setattr(torch.onnx, "export", fail)
    written = export_student(student(), None, (1, 32, 32), str(tmp_path / "student.pt2"))
    assert written["onnx"] is None and "cannot export" in written["onnx_error"]
    assert os.path.exists(written["pt2"]) and os.listdir(tmp_path) == ["student.pt2"]  # no temporary files left
    assert "warning: cannot export" in capsys.readouterr().out
