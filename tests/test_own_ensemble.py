"""Your own ensemble, no data at all: three teachers of three kinds through the installed command's entry point."""
import json
import os
import subprocess
import sys

import numpy as np
import timm
import torch
import torchvision
import yaml

from cdkd.checkpoint import load_exported

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USER_CLASS = '''
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, num_classes=10, width=16):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.body(x))
'''


def test_three_kinds_no_data_anywhere_exports_matching_onnx(tmp_path):
    """torchvision ResNet-18 (64 px, ImageNet mean/std) + timm resnet10t (its pretrained_cfg) + a user class
    ([-1, 1]); no CDKD_DATA_DIR, no ./data, no ../shared: `cdkd distill --config FILE` distils and exports."""
    work = tmp_path / "user"
    work.mkdir()
    (work / "mynets.py").write_text(USER_CLASS)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), work / "r18.pt")
    torch.save({"state_dict_ema": timm.create_model("resnet10t", num_classes=10).state_dict()}, work / "t.pth")
    sys.path.insert(0, str(work))
    try:
        from mynets import Net
        torch.save(Net().state_dict(), work / "net.pt")
    finally:
        sys.path.remove(str(work))
        sys.modules.pop("mynets", None)
    cfg = {"run_dir": "run", "input_shape": [3, 64, 64],
           "teachers": [{"kind": "torchvision", "arch": "resnet18", "path": "r18.pt", "kwargs": {"num_classes": 10},
                         "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
                        {"kind": "timm", "arch": "resnet10t", "path": "t.pth", "kwargs": {"num_classes": 10}},
                        {"kind": "python", "factory": "mynets:Net", "path": "net.pt",
                         "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}],
           "model": {"student": "mfs_timm_small", "nz": 32, "ngf": 8},
           "train": {"iterations": 3, "batch_size": 8, "student_steps": 2, "log_every": 1, "ckpt_every": 2},
           "probe": {"samples": 16, "steps": 2, "snapshots": 1, "batch_size": 8},
           "distributed": {"workers": 0}}
    (work / "ens.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "CDKD_DATA_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([REPO, str(work)])
    assert not os.path.exists(work / "data") and not os.path.exists(work.parent / "shared")
    out = subprocess.run([sys.executable, "-m", "cdkd.commands", "distill", "--config", "ens.yaml"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "data-free run" in out.stdout and "Traceback" not in out.stderr
    result = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])
    assert result["iterations"] == 3 and "student_acc" not in result and 0 <= result["probe_agreement"] <= 1
    assert result["input_shape"] == [3, 64, 64] and result["generator"] == "generator32"
    meta = json.loads((work / "run" / "student.json").read_text())
    assert meta["input"] == "raw [0, 1] pixels"  # three normalisations: the student normalises inside
    assert meta["normalized_inside"]["mean"] == [0.485, 0.456, 0.406]  # the space: the first declared one
    # the ONNX student equals the PyTorch (torch.export) student within 1e-4
    import onnxruntime
    x = torch.rand(5, 3, 64, 64)
    expected = load_exported(str(work / "run" / "student.pt2"))(x).detach().numpy()
    session = onnxruntime.InferenceSession(str(work / "run" / "student.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == (5, 10) and np.abs(got - expected).max() <= 1e-4
    # student params <= 1/4 of the ensemble's
    assert 4 * result["student_params"] <= result["teacher_params"]
