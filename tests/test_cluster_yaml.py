"""cluster.yaml is a valid Ray cluster-launcher config (the JSON schema shipped in the ray wheel, then Ray's own checks)."""
import json
import os

import jsonschema
import pytest
import yaml

from tests.conftest import REPO

ray = pytest.importorskip("ray")


def load():
    with open(os.path.join(REPO, "cluster.yaml")) as f:
        return yaml.safe_load(f)


def schema():
    with open(os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")) as f:
        return json.load(f)


def test_cluster_yaml_validates_against_ray_schema():
    cfg = load()
    jsonschema.validate(cfg, schema())
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert {"teacher_gpu", "student_gpu"} <= {r for t in types.values() for r in t["resources"]}
    assert "2.60.0" in cfg["docker"]["image"]  # pinned to the ray version in pyproject.toml


def test_schema_check_is_not_vacuous():
    bad = load()
    bad["available_node_types"]["gpu_teacher"]["resources"] = {"GPU": 0.5}  # fractions are not allowed on nodes
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema())


def submit_flags(text: str) -> list[str]:
    """The `--key=value` overrides of the `ray job submit ... python jobs/cdfkd_mfs.py` command in `text`."""
    import re
    import shlex
    cmd = re.search(r"ray job submit[^\n]*?--\s*\\?\s*\n?(.*?)(?:\n\s*(?:#\s*)?ray down|\n```)", text, re.S).group(1)
    words = shlex.split(cmd.replace("#", " ").replace("\\\n", " "))
    return [w for w in words if w.startswith("--distributed.") or w.startswith("--run_dir")]


def test_the_submit_command_in_cluster_yaml_and_readme_is_a_valid_config():
    from cdkd.config import load_config
    for name in ("cluster.yaml", "README.md"):
        with open(os.path.join(REPO, name)) as f:
            flags = submit_flags(f.read())
        assert "--distributed.use_gpu=true" in flags, (name, flags)
        cfg = load_config(None, flags)  # every override parses and type-checks
        dc = cfg.distributed
        assert dc.use_gpu and dc.teacher_pool == "ray" and dc.teacher_resources == {"teacher_gpu": 1}, name
        assert dc.worker_resources == {"student_gpu": 1}, name
