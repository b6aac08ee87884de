"""The work of a run that needs its teachers but is not training (input checks, the probe set), placed on a
worker's resources by Ray rather than run in the driver: on a cluster the driver sits on a head meant to
schedule. What needs no teacher is checked in the driver before anything starts."""
from __future__ import annotations

import os
from typing import Any

import ray
import torch
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..config import Config, make_config
from .. import errors
from ..errors import CdkdError
from ..teachers.base import check_file
from ..data import load_data
from ..models import MODELS
from ..trainer import RESIZABLE, build, check_writable, prepare_selection
from .resources import Bundle, fmt, teacher_bundle, wait_for, worker_bundle


def check_without_teachers(cfg: Config, run_dir: str = "") -> None:
    """The checks the driver makes itself, before anything starts: those that need no teacher loaded (teacher
    files exist, the run directory, or `run_dir`, is writable, the data set is there)."""
    if not cfg.teachers:
        raise CdkdError("no teachers configured (teachers: [{path: ...}, ...])")
    for spec in cfg.teachers:
        if spec.path or spec.kind not in ("timm", "torchvision"):
            check_file(spec.path)
    MODELS.get(cfg.model.student)  # a known student (the generator's name is checked by the config)
    check_writable(run_dir or cfg.run_dir)
    size = tuple(cfg.data.size) or tuple(cfg.input_shape[1:]) or None
    if cfg.data.name != "none" and (size or cfg.data.name not in RESIZABLE):  # the data set is there (or fetched)
        load_data(cfg.data.name, cfg.data.root, cfg.data.download, size)


def named_bundles(cfg: Config) -> list[tuple[str, dict[str, float]]]:
    dc = cfg.distributed
    out = [("a Ray Train worker", worker_bundle(dc))] if dc.workers else []
    if dc.teacher_pool == "ray":
        out.append(("a teacher actor", teacher_bundle(dc)))
    return out


@ray.remote(max_retries=0)
def _prepare(cfg_dict: dict[str, Any], pool: Any, with_data: bool) -> dict[str, Any]:
    """Every input check that needs the teachers, then the probe set (written to its path for the workers)."""
    try:
        prepare_selection(build(make_config(cfg_dict), with_data=with_data, pool=pool))
    except CdkdError as e:
        return {"error": str(e), "type": type(e).__name__}
    return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
            "device": "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"}


def prepare_on_worker(cfg: Config, pool: Any, b: Bundle, pg: PlacementGroup | None = None,
                      with_data: bool = True) -> dict[str, Any]:
    """`_prepare` in bundle 0 of `pg`, or of a placement group of the bundle `b` made and waited for here (a
    worker's CPUs, GPU and custom resources): the driver, on a head meant to schedule, loads no teacher and
    trains no probe generator. Returns where it ran (pid, node, device)."""
    own = pg is None
    if own:
        dc = cfg.distributed
        pg = placement_group([b])
        try:
            wait_for([pg.ready()], f"a worker of {fmt(b)} to check the run and build its probe set", b,
                     dc.placement_timeout_s, dc.wait_report_s)
        except BaseException:
            remove_placement_group(pg)
            raise
    try:
        out = ray.get(_prepare.options(
            num_cpus=b.get("CPU", 0), num_gpus=b.get("GPU", 0),
            resources={k: v for k, v in b.items() if k not in ("CPU", "GPU")} or None,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0),
        ).remote(cfg.to_dict(), pool, with_data))
    finally:
        if own:
            remove_placement_group(pg)
    if "error" in out:  # the same one line (and error class) as a check in the driver would give
        raise getattr(errors, out["type"], CdkdError)(out["error"])
    return out
