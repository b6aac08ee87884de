"""A short data-free distillation on real MNIST: teachers trained on real digits, student sees only synthetic inputs."""
import torch

from cdkd.config import make_config
from cdkd.data import load_data
from cdkd.models import create_model
from cdkd.supervised import subset, train_classifier
from cdkd.teachers import save_classifier
from cdkd.trainer import build, format_table, train


def test_distillation_beats_chance_on_mnist(tmp_path, data_root):
    data = load_data("mnist", data_root, download=False)
    train_part = subset(data.train, 12000, seed=0)
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        m = create_model("lenet5")
        acc = train_classifier(m, train_part, data.test, epochs=1, seed=seed)
        assert acc > 0.9
        path = str(tmp_path / f"t{seed}.pt")
        save_classifier(path, m, "lenet5", {"num_classes": 10, "in_chans": 1}, (1, 32, 32))
        paths.append(path)
    cfg = make_config({"teachers": [{"path": p} for p in paths], "run_dir": str(tmp_path / "run"),
                       "data": {"name": "mnist", "root": data_root, "download": False},
                       "model": {"nz": 64, "ngf": 16},
                       "train": {"iterations": 60, "batch_size": 64, "ckpt_every": 30, "sample_every": 30},
                       "aggregation": {"num_samples": 200, "epochs": 20}})
    result = train(build(cfg))
    print(format_table(result))
    assert result["iterations"] == 60
    assert result["student_acc"] > 0.6, result  # chance is 0.1
    assert result["student_acc_attention"] > 0.5
