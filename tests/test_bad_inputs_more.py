"""More bad input, one `error:` line and exit 2 each (the table of tests/test_bad_inputs.py, continued):
config values checked to the element, and YAML files that are malformed in every way."""
import pytest

from tests.conftest import write_yaml
from tests.test_bad_inputs import config_file, job


def yaml_file(tmp_path, name):
    path = tmp_path / f"{name}.yaml"
    if name == "yaml_tab":
        path.write_text("train:\n\titerations: 3\n")
    elif name == "yaml_binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif name == "yaml_deep":
        path.write_text("[" * 20000 + "]" * 20000 + "\n")
    elif name == "yaml_alias_bomb":  # 10^12 values once expanded
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 12)]
        path.write_text("\n".join(lines) + "\nmodel: {student_kwargs: {depth: *a11}}\n")
    elif name == "yaml_bad_date":
        path.write_text("train: {seed: 2020-13-45}\n")
    elif name == "yaml_unclosed":
        path.write_text("train: {iterations: 3\n")
    return str(path)


YAML_ROWS = {
    "yaml_tab": "found character '\\t' that cannot start any token (line 2, column 1)",
    "yaml_binary": "invalid YAML",
    "yaml_deep": "invalid",
    "yaml_alias_bomb": "once YAML aliases expand",
    "yaml_bad_date": "invalid YAML (month must be in 1..12)",
    "yaml_unclosed": "invalid YAML",
}

OVERRIDE_ROWS = {
    "milestones_decreasing": ("--optim.milestones=[0.6, 0.3]", "optim.milestones must increase: [0]=0.6 then [1]=0.3"),
    "milestone_above_one": ("--optim.milestones=[0.5, 1.5]", "optim.milestones[1]=1.5: must be a number in (0, 1)"),
    "milestone_not_a_number": ("--optim.milestones=['a']", "optim.milestones[0]='a'"),
    "milestone_bool": ("--optim.milestones=[True]", "optim.milestones[0]=True"),
    "worker_resources_negative": ("--distributed.worker_resources={'gpu_slot': -1}",
                                  "distributed.worker_resources['gpu_slot']=-1: must be a non-negative number"),
    "worker_resources_not_a_number": ("--distributed.worker_resources={'gpu_slot': 'x'}",
                                      "distributed.worker_resources['gpu_slot']='x'"),
    "worker_resources_int_key": ("--distributed.worker_resources={1: 2}",
                                 "distributed.worker_resources: key 1 must be a non-empty string"),
    "teacher_resources_nan": ("--distributed.teacher_resources={a: .nan}", "distributed.teacher_resources['a']=nan"),
    "student_kwargs_int_key": ("--model.student_kwargs={1: 2}", "model.student_kwargs: key 1 must be a non-empty"),
    "loop_unknown": ("--train.loop=zskt", "train.loop='zskt': choose one of dfad, abm"),
    "kl_reduction_unknown": ("--loss.kl_reduction=sum", "loss.kl_reduction='sum': choose one of batchmean, mean"),
    "keep_best_unknown": ("--train.keep_best=test", "train.keep_best='test': choose one of none, val, probe"),
    "amp_unknown": ("--train.amp=fp8", "train.amp='fp8': choose one of auto, bf16, fp16, none"),
    "compile_unknown": ("--train.compile=fast", "train.compile='fast': choose one of none, teachers"),
    "batched_targets_not_bool": ("--train.batched_targets=maybe", "train.batched_targets: expected bool, got 'maybe'"),
    "student_clip_negative": ("--optim.student_grad_clip=-1", "optim.student_grad_clip must be >= 0"),
    "placement_timeout_negative": ("--distributed.placement_timeout_s=-5",
                                   "distributed.placement_timeout_s must be >= 0"),
    "wait_report_zero": ("--distributed.wait_report_s=0", "distributed.wait_report_s must be positive, got 0.0"),
}

SHAPE_ROWS = {
    "input_shape_negative": ([1, -32, 32], "teachers[0].input_shape[1]=-32: must be a positive int"),
    "input_shape_float": ([1, 32.0, 32], "teachers[0].input_shape[1]=32.0: must be a positive int"),
    "input_shape_scalar": (32, "teachers[0].input_shape: expected list"),
}


def argv_for(tmp_path, teachers, data_root, name):
    base = ["--data-dir", data_root, "--distributed.workers=0", f"--run_dir={tmp_path / 'run'}"]
    if name in YAML_ROWS:
        return ["--config", yaml_file(tmp_path, name), *base], YAML_ROWS[name]
    if name in OVERRIDE_ROWS:
        override, expected = OVERRIDE_ROWS[name]
        return ["--config", config_file(tmp_path, teachers), *base, override], expected
    shape, expected = SHAPE_ROWS[name]
    cfg = write_yaml(tmp_path / "shape.yaml", {"teachers": [{"path": teachers[0], "input_shape": shape}]})
    return ["--config", cfg, *base], expected


@pytest.mark.parametrize("name", [*YAML_ROWS, *OVERRIDE_ROWS, *SHAPE_ROWS])
def test_bad_input_is_one_line(tmp_path, teacher_paths, data_root, capsys, name):
    argv, expected = argv_for(tmp_path, teacher_paths, data_root, name)
    assert job.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()  # no work was done
