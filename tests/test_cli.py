"""The `cdkd` command: generated --help covers every config key, --print-config round-trips, the lists, bad flags."""
import dataclasses
import importlib
import os
import subprocess
import sys
import typing
from dataclasses import dataclass, field

import pytest
import yaml

from cdkd import config as C
from cdkd.commands import main
from cdkd.commands.keys import field_comments, method_descriptions
from tests.conftest import REPO, tiny_config, write_yaml


def leaf_keys(cls=C.Config, prefix=""):
    """Every dotted leaf key of the config, walked here independently of cdkd.commands.keys."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_distill_help_lists_every_config_key(capsys):
    rc, out, _ = run(capsys, "distill", "--help")
    assert rc == 0
    lines = out.splitlines()
    for key in leaf_keys():
        assert any(line.split()[:1] == [key] for line in lines), f"--help does not list {key}"
    for f in dataclasses.fields(C.TeacherSpec):
        assert any(line.split()[:1] == [f"teachers[].{f.name}"] for line in lines), f.name
    amp = next(line for line in lines if line.split()[:1] == ["train.amp"])
    assert "str = 'auto'" in amp and "{auto, bf16, fp16, none}" in amp
    assert "autocast dtype" in out  # train.amp's comment in config.py
    assert "{cdfkd_mfs, ddad, mad, mad_dfad, cgdd}" in next(line for line in lines if line.split()[:1] == ["method"])
    assert "[mad: True, mad_dfad: True]" in next(line for line in lines if line.split()[:1] == ["train.ema"])  # a preset's value
    assert "(yaml)" in next(line for line in lines if line.split()[:1] == ["teachers"])


def test_field_comments_are_read_from_the_source():
    @dataclass
    class Demo:
        a: int = 1                    # the a
        b: str = "x"
        c: list = field(default_factory=list)  # first line
                                               # and its continuation
        # a section comment, not c's
        d: float = 0.5                # the d

    assert field_comments(Demo) == {"a": "the a", "b": "", "c": "first line and its continuation", "d": "the d"}
    assert field_comments(C.TrainConfig)["amp_scope"].endswith("auto = all where bf16 convolutions are fast (as amp), else generator")


def test_print_config_round_trips(tmp_path, capsys, teacher_paths):
    path = write_yaml(tmp_path / "cfg.yaml", tiny_config(teacher_paths, str(tmp_path / "run"), method="mad"))
    rc, out, err = run(capsys, "distill", "--config", path, "--print-config", "--loss.w_bn=0.3", "--data-dir", "/x")
    assert rc == 0, err
    cfg = C.make_config(yaml.safe_load(out))
    assert cfg == C.load_config(path, ["--loss.w_bn=0.3", "--data.root='/x'"])
    assert cfg.loss.w_bn == 0.3 and cfg.train.ema and cfg.data.root == "/x"
    assert not (tmp_path / "run").exists()


def test_print_config_of_the_demo_trains_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, "distill", "--print-config")
    assert rc == 0, err
    cfg = C.make_config(yaml.safe_load(out))
    assert cfg.model.student == "mfs_lenet5_half" and len(cfg.teachers) == 3
    assert os.listdir(tmp_path) == []  # no teachers trained, no data downloaded


def test_list_models_and_methods(capsys):
    rc, out, _ = run(capsys, "distill", "--list-models")
    line = next(x for x in out.splitlines() if x.split()[:1] == ["mfs_lenet5_half"])
    assert rc == 0 and "LeNet-5-half trunk" in line
    rc, out, _ = run(capsys, "distill", "--list-methods")
    assert rc == 0 and [x.split()[0] for x in out.splitlines()] == list(C.METHODS)
    assert all(method_descriptions().values())


def assert_one_error_line(rc, err, text):
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], err


def test_bad_arguments_give_one_line_and_exit_2(capsys):
    for argv, text in [(["distill", "--bogus"], "unrecognised arguments ['--bogus']"),
                       (["distill", "--print-config", "--train.amp=fp17"], "train.amp='fp17'"),
                       (["distill", "--print-config", "--trian.amp=none"], "unknown config key 'trian'"),
                       (["eval", "x.pt2", "--dataset", "svhn"], "invalid choice: 'svhn'"),
                       (["export"], "required: run_dir"),
                       (["frobnicate"], "unknown command 'frobnicate'")]:
        assert_one_error_line(*run(capsys, *argv)[::2], text)


def test_module_runs_as_a_command():
    proc = subprocess.run([sys.executable, "-m", "cdkd.commands", "distill", "--bogus"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert_one_error_line(proc.returncode, proc.stderr, "unrecognised arguments")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "jobs", "cdfkd_mfs.py"), "--list-methods"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split()[0] == "cdfkd_mfs", proc.stderr


def test_console_script_resolves_to_main():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        target = tomllib.load(f)["project"]["scripts"]["cdkd"]
    module, _, attr = target.partition(":")
    assert getattr(importlib.import_module(module), attr) is main
