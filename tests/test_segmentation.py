"""Dense prediction (issue 19): mIoU with void, the CamVid loader, per-pixel losses, the split generator gradient
for segmentation teachers, and a 3-iteration DDAD segmentation run with the teachers in-process and in Ray actors."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cdkd import camvid, losses as L
from cdkd.aggregation import AttentionAggregator
from cdkd.config import make_config
from cdkd.data import load_camvid
from cdkd.errors import DataError, TeacherError
from cdkd.models import create_model
from cdkd.tasks import get_task, task_of
from cdkd.tasks.segmentation import confusion, iou_from_confusion, mean_iou
from cdkd.teachers import InputNorm, load_teacher, save_classifier, validate_teachers
from cdkd.trainer import build, train
from tests.conftest import SHARED_DATA, tiny_config
from tests.test_generator_split import split_vs_reference

SHAPE = (3, 32, 48)


def camvid_root() -> str:
    root = os.environ.get("CDKD_DATA_DIR", SHARED_DATA)
    if camvid.find_root(root) is None:
        pytest.skip(f"no CamVid under {root}")
    return root


@pytest.fixture(scope="module")
def seg_teachers(tmp_path_factory) -> list[str]:
    """Two random LR-ASPP/MobileNetV3-Small x0.5 teachers for 32 x 48 inputs, CamVid's normalisation."""
    d = tmp_path_factory.mktemp("seg-teachers")
    paths = []
    for seed in range(2):
        torch.manual_seed(seed)
        model = create_model("lraspp_mbv3_small", num_classes=11, width_mult=0.5)
        path = str(d / f"seg-{seed}.pt")
        save_classifier(path, model, "lraspp_mbv3_small", {"num_classes": 11, "width_mult": 0.5}, SHAPE,
                        norm=InputNorm(*camvid.NORM))
        paths.append(path)
    return paths


def seg_config(paths, run_dir="", **sections) -> dict:
    cfg = tiny_config(paths, run_dir, method="ddad",
                      model={"student": "mh_lraspp_mbv3_small", "student_kwargs": {"width_mult": 0.5}},
                      train={"iterations": 3, "batch_size": 4, "student_steps": 2},
                      probe={"samples": 8, "steps": 2, "snapshots": 1, "batch_size": 4})
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def test_miou_ignores_void_pixels():
    y = torch.tensor([[[0, 0, 1], [11, 1, 2]]])
    pred = torch.tensor([[[0, 1, 1], [2, 1, 2]]])
    conf = confusion(pred, y, 3)
    assert conf.sum() == 5  # the void pixel is not counted, whatever was predicted there
    iou = iou_from_confusion(conf)
    # class 0: TP 1, FN 1 -> 1/2; class 1: TP 2, FP 1 -> 2/3; class 2: TP 1 (the void pixel's "2" is no FP) -> 1
    assert torch.allclose(iou, torch.tensor([0.5, 2 / 3, 1.0], dtype=torch.float64))
    assert mean_iou(iou) == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    # a class absent from labels and predictions is left out of the mean, not counted as 0
    assert mean_iou(iou_from_confusion(confusion(pred, y, 4))) == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)


def test_camvid_loader_reads_the_real_files():
    d = camvid.find_root(camvid_root())
    full = camvid.load_split(d, "train", (180, 240), limit=3)
    x, y = full.tensors
    assert x.shape == (3, 3, 180, 240) and y.shape == (3, 180, 240) and y.dtype == torch.int64
    assert 0 <= y.min() and y.max() <= camvid.VOID and (y == camvid.VOID).any() and len(y.unique()) > 5
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in camvid.NORM)
    pixels = x * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5 and pixels.std() > 0.1
    small = camvid.load_split(d, "test", (60, 80), "file", limit=2)
    assert small.tensors[0].shape[-2:] == (60, 80) and small.tensors[1].shape[-2:] == (180, 240)
    work = camvid.load_split(d, "val", (60, 80), limit=2).tensors[1]
    assert work.shape[-2:] == (60, 80) and set(work.unique().tolist()) <= set(range(12))


def write_camvid(root, size=(360, 480), n=2):
    """A synthetic CamVid in the SegNet layout (full size by default: nothing may assume 240x180)."""
    from PIL import Image
    d = root / "camvid"
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        (d / split).mkdir(parents=True)
        (d / f"{split}annot").mkdir()
        lines = []
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(d / split / f"{i}.png")
            Image.fromarray(rng.integers(0, 12, size, dtype=np.uint8)).save(d / f"{split}annot" / f"{i}.png")
            lines.append(f"/SegNet/CamVid/{split}/{i}.png /SegNet/CamVid/{split}annot/{i}.png")
        (d / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return d


def test_camvid_any_size_and_clear_errors_on_bad_files(tmp_path):
    d = write_camvid(tmp_path)
    data = load_camvid(str(tmp_path), (90, 120))
    assert data.train.tensors[0].shape == (2, 3, 90, 120) and data.test.tensors[1].shape == (2, 360, 480)
    assert data.task == "segmentation" and data.val is not None and data.num_classes == 11
    png = d / "train" / "1.png"
    png.write_bytes(png.read_bytes()[:200])  # truncated
    with pytest.raises(DataError, match=r"1\.png: cannot read"):
        load_camvid(str(tmp_path), (90, 120))
    (d / "train" / "1.png").unlink()
    with pytest.raises(DataError, match=r"1\.png not found"):
        load_camvid(str(tmp_path), (90, 120))
    with pytest.raises(DataError, match="CamVid not found"):
        load_camvid(str(tmp_path / "nowhere"))


def test_per_pixel_losses_match_their_formulas():
    torch.manual_seed(0)
    t, s = torch.randn(2, 3, 5, 4, 6), torch.randn(2, 3, 5, 4, 6)  # (K, B, C, H, W)
    pt, log_pt, log_ps = F.softmax(t, 2), F.log_softmax(t, 2), F.log_softmax(s, 2)
    per_pixel = (pt * (log_pt - log_ps)).sum(2)  # KL(t || s) at every (k, b, h, w)
    assert torch.allclose(L.kl_div(t, s), per_pixel.mean(), atol=1e-6)
    assert torch.allclose(L.header_l1(s, t), (s - t).abs().mean())
    t1 = t[0]  # (B, C, H, W): DAFL's one-hot loss per pixel
    rows = t1.permute(0, 2, 3, 1).reshape(-1, 5)
    assert torch.allclose(L.dafl_onehot(t1), F.cross_entropy(rows, rows.argmax(1)))
    with pytest.raises(ValueError, match="per-pixel"):
        L.cross_entropy(t, torch.zeros(3, dtype=torch.long))


def test_attention_aggregation_weights_headers_per_pixel():
    agg = AttentionAggregator(5)
    s = torch.randn(3, 2, 5, 4, 6)
    out = agg(s)
    alpha = F.softmax(agg.score(s.movedim(2, -1)), 0)  # (K, B, H, W, 1)
    assert out.shape == (2, 5, 4, 6)
    assert torch.allclose(out, (alpha.movedim(-1, 2) * s).sum(0), atol=1e-6)


def test_task_from_teacher_logits_and_mixed_tasks_are_an_error(seg_teachers, tmp_path):
    assert task_of(torch.zeros(2, 10)).name == "classification"
    assert task_of(torch.zeros(2, 11, 8, 8)).name == "segmentation" and task_of(torch.zeros(2, 3, 4)) is None
    seg = load_teacher(make_config(seg_config(seg_teachers)).teachers[0])
    assert validate_teachers([seg], SHAPE)[0] == 11 and seg.task == "segmentation"
    save_classifier(str(tmp_path / "wrn.pt"), create_model("wrn_16_1", num_classes=11), "wrn_16_1",
                    {"num_classes": 11}, SHAPE)
    cls = load_teacher(make_config(tiny_config([str(tmp_path / "wrn.pt")])).teachers[0])
    with pytest.raises(TeacherError, match="is a classification model but"):
        validate_teachers([seg, cls], SHAPE)


def test_torchvision_segmentation_teacher_builds_without_downloads(tmp_path):
    from torchvision.models import get_model
    model = get_model("lraspp_mobilenet_v3_large", weights=None, weights_backbone=None, num_classes=11)
    torch.save(model.state_dict(), tmp_path / "tv.pth")
    spec = make_config({"teachers": [{"kind": "torchvision", "arch": "lraspp_mobilenet_v3_large",
                                      "path": str(tmp_path / "tv.pth"), "kwargs": {"num_classes": 11}}]}).teachers[0]
    t = load_teacher(spec)
    assert validate_teachers([t], (3, 64, 96)) == (11, (3, 64, 96)) and t.task == "segmentation"


@pytest.mark.parametrize("loss", [{}, {"adv_loss": "kl", "student_loss": "kl"}])
def test_split_equals_autograd_for_segmentation_teachers(seg_teachers, loss):
    cfg = make_config(seg_config(seg_teachers, loss=loss))
    diff, largest = split_vs_reference(build(cfg, with_data=False).distiller, cfg.loss, 4)
    assert diff <= 1e-5, diff
    assert largest > 1e-4  # the comparison is not between zeros


def test_conditional_losses_are_refused_for_segmentation(seg_teachers):
    from cdkd.errors import ConfigError
    with pytest.raises(ConfigError, match="per-pixel meaning"):
        build(make_config(seg_config(seg_teachers, method="cgdd")), with_data=False)


def check_segmentation_run(result, run_dir, k):
    assert result["task"] == "segmentation" and result["iterations"] == 3
    assert len(result["teacher_miou"]) == k and len(result["header_miou"]) == k
    assert len(result["student_iou"]) == 11 and 0 <= result["student_miou"] <= 1
    assert "val_miou" in result and "probe_agreement" in result
    with open(os.path.join(run_dir, "student.json")) as f:
        assert json.load(f)["output"] == "logits (batch, 11, height, width)"
    from torchvision.io import decode_png, read_file
    grid = decode_png(read_file(os.path.join(run_dir, "samples", "iter_000003.png")))
    # 16 generated images, each beside its label map: 4 rows of 8 tiles of 32 x 48 (+ 2 px padding)
    assert grid.shape[-2:] == (4 * 34 + 2, 8 * 50 + 2)
    exported = torch.export.load(os.path.join(run_dir, "student.pt2")).module()
    assert exported(torch.randn(2, *SHAPE)).shape == (2, 11, *SHAPE[1:])


def test_segmentation_distillation_end_to_end_in_process(seg_teachers, tmp_path):
    root = camvid_root()
    cfg = make_config(seg_config(seg_teachers, str(tmp_path / "run"), data={"name": "camvid", "root": root},
                                 probe={"val_samples": 4}, aggregation={"num_samples": 6, "epochs": 2}))
    result = train(build(cfg))
    check_segmentation_run(result, str(tmp_path / "run"), 2)
    assert "student_miou_attention" in result and len(result["teacher_iou"]) == 2
    # `cdkd eval` on the exported program (student + its attention aggregator): mIoU on the 233 test images
    from cdkd.commands.evaluate import evaluate
    out = evaluate(result["exported_student"], "camvid", root)
    assert out["samples"] == 233 and len(out["iou"]) == 11


def test_segmentation_distillation_with_teachers_in_ray_actors(ray_cluster, seg_teachers, tmp_path):
    from cdkd.config import DistributedConfig, TeacherSpec
    from cdkd.distributed.teacher_actors import RayTeacherPool
    root = camvid_root()
    pool = RayTeacherPool([TeacherSpec(path=p) for p in seg_teachers],
                          DistributedConfig(teacher_pool="ray", teacher_actors=2, teacher_cpus=0.25))
    try:
        assert pool.task == "segmentation"
        cfg = make_config(seg_config(seg_teachers, str(tmp_path / "run"), data={"name": "camvid", "root": root},
                                     probe={"val_samples": 4}))
        result = train(build(cfg, pool=pool))
    finally:
        pool.shutdown()
    check_segmentation_run(result, str(tmp_path / "run"), 2)


def test_sample_grid_pairs_each_image_with_its_label_map():
    x = torch.randn(3, 3, 8, 10)
    t = torch.zeros(1, 3, 11, 8, 10)
    t[0, :, 3] = 1.0  # every pixel: Road
    grid = get_task("segmentation").sample_grid(x, t)
    assert grid.shape == (6, 3, 8, 10) and grid.min() >= 0 and grid.max() <= 1
    assert torch.allclose(grid[1], camvid.PALETTE[3].float().view(3, 1, 1).expand(3, 8, 10) / 255)


def test_a_student_or_teacher_arch_of_the_other_task_is_one_line(seg_teachers, tmp_path):
    """A classification student for segmentation teachers, or a classifier arch for CamVid teachers, is refused
    before any work with one line naming the fix (not a shape error deep in a loss)."""
    from cdkd.demo import ensure_teachers
    from cdkd.errors import CdkdError, ConfigError
    with pytest.raises(ConfigError, match="classification student but the teachers are segmentation"):
        build(make_config(seg_config(seg_teachers, str(tmp_path / "run"), model={"student": "mfs_lenet5_half", "student_kwargs": {}})))
    write_camvid(tmp_path, size=(36, 48))
    data = load_camvid(str(tmp_path), (36, 48))
    with pytest.raises(CdkdError, match="--arch lenet5 is a classification model but camvid"):
        ensure_teachers(data, "camvid", "lenet5", [0], str(tmp_path / "teachers"), epochs=1)
    assert not (tmp_path / "teachers").exists() or not os.listdir(tmp_path / "teachers")
