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
