"""Every example config in jobs/configs/ is a valid config (keys, types, choices), so the README's examples run."""
import glob
import os

import pytest

from cdkd.config import load_config

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jobs",
                                        "configs", "*.yaml")))


def test_the_three_examples_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"cifar10_wrn.yaml", "own_ensemble_64px.yaml", "torchscript_ensemble.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_example_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.teachers and all(t.path for t in cfg.teachers)
    if cfg.data.name == "none":  # a data-free example must say its input shape or have teachers that do
        assert cfg.input_shape or all(t.kind in ("cdkd", "export") for t in cfg.teachers)
