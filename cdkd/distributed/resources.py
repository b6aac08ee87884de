"""What a run asks of the Ray cluster, whether any node could ever give it, and waiting for it.

Nothing here gates a run on what the cluster has *now*: an autoscaling cluster has no GPU node until a
request for one pends. A request pends, the autoscaler adds nodes, and the driver prints one line every
`distributed.wait_report_s` seconds saying what it waits for and what the cluster has. What the cluster
*could* have is known in two cases only, and only there does a request that can never fit stop at once:
- a cluster launched by `ray up`: its autoscaler config on the head (`distributed.autoscaler_config`, Ray's
  `~/ray_bootstrap_config.yaml`, with every node type's resources filled in by the launcher);
- the local cluster this driver started itself (no RAY_ADDRESS): its nodes are all there will be.
A cluster reached through RAY_ADDRESS without a launcher config may grow by hand (`ray start --address`):
its requests just pend.
"""
from __future__ import annotations

import math
import os
import time
import ray
import yaml

from ..config import Config, DistributedConfig
from ..errors import CdkdError

Bundle = dict[str, float]


def embedded_cluster() -> bool:
    """Whether `ray.init()` here would start the local cluster (no connection yet, no RAY_ADDRESS): its nodes are
    all there will be, and this machine does the work."""
    return not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")


def num_actors(dc: DistributedConfig, num_teachers: int) -> int:
    """`teacher_actors` actors (0 = one per teacher), never more than there are teachers."""
    return min(dc.teacher_actors or num_teachers, num_teachers)


def worker_bundle(dc: DistributedConfig) -> Bundle:
    """One Ray Train worker (also the set-up task that stands in for the workers before they start)."""
    b = {"CPU": dc.cpus_per_worker, **dc.worker_resources}
    if dc.use_gpu:
        b["GPU"] = dc.gpus_per_worker
    return {k: float(v) for k, v in b.items() if v}


def teacher_bundle(dc: DistributedConfig) -> Bundle:
    """One teacher actor."""
    b = {"CPU": dc.teacher_cpus, "GPU": dc.teacher_gpus, **dc.teacher_resources}
    return {k: float(v) for k, v in b.items() if v}


def run_bundles(cfg: Config, driver: Bundle | None = None) -> list[Bundle]:
    """Every bundle one run holds at once: `driver` (a sweep trial's process), the Ray Train workers (or, with
    workers 0, the engine in the driver's own bundle) and the teacher actors."""
    dc = cfg.distributed
    out = [driver] if driver else []
    out += [worker_bundle(dc)] * dc.workers
    if dc.teacher_pool == "ray":
        out += [teacher_bundle(dc)] * num_actors(dc, len(cfg.teachers))
    return [b for b in out if b]


def fmt(res: Bundle) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(res.items())) + "}"


def launcher_node_types(path: str) -> list[tuple[Bundle, int]] | None:
    """(resources, max count) of every node type in a `ray up` autoscaler config, or None without one. The
    launcher fills in each type's CPUs and GPUs from its instance type; a type with no CPU count (detection
    failed: `ray up` warns) has no known CPU limit, one with no GPU count has no GPU."""
    path = os.path.expanduser(path) if path else ""
    if not path or not os.path.isfile(path):
        return None
    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    types = doc.get("available_node_types") or {}
    head = doc.get("head_node_type")
    return [({"CPU": math.inf, **{k: float(v) for k, v in (t.get("resources") or {}).items()}},
             1 if name == head else int(t.get("max_workers", doc.get("max_workers", 1)) or 0))
            for name, t in types.items()]


def alive_nodes() -> list[Bundle]:
    return [{k: float(v) for k, v in n.get("Resources", {}).items()} for n in ray.nodes() if n.get("Alive")]


def node_capacities(dc: DistributedConfig, embedded: bool) -> tuple[list[Bundle], bool]:
    """(every node the cluster can have, whether that list is final). With a launcher config: each node type
    `max_workers` times; else the alive nodes, final only for the embedded local cluster."""
    types = launcher_node_types(dc.autoscaler_config)
    if types is not None:
        return [res for res, count in types for _ in range(count)], True
    return alive_nodes(), embedded


def fits(bundle: Bundle, node: Bundle) -> bool:
    return all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())


def check_can_fit(named: list[tuple[str, Bundle]], nodes: list[Bundle], final: bool, where: str) -> None:
    """One line at once for a bundle no node of a final list of nodes could ever hold."""
    if not final:
        return
    for what, bundle in named:
        if not any(fits(bundle, n) for n in nodes):
            biggest = max(nodes, key=lambda n: sum(n.get(k, 0.0) for k in bundle), default={})
            raise CdkdError(f"{what} asks for {fmt(bundle)} but no node of {where} can ever offer that (the largest "
                            f"has {fmt({k: biggest.get(k, 0.0) for k in bundle})}); lower the request or add a node "
                            "type that has it")


def how_many_fit(bundles: list[Bundle], nodes: list[Bundle]) -> int:
    """How many whole copies of `bundles` (one run or trial) the nodes hold at once, placed first-fit with the
    largest bundles first: what a sweep may run concurrently."""
    free = [dict(n) for n in nodes]
    order = sorted(bundles, key=lambda b: -sum(b.values()))
    count = 0
    while count < 10_000:
        for b in order:
            node = next((n for n in free if fits(b, n)), None)
            if node is None:
                return count
            for k, v in b.items():
                node[k] = node.get(k, 0.0) - v
        count += 1
    return count


def missing(need: Bundle, available: Bundle) -> Bundle:
    return {k: v - available.get(k, 0.0) for k, v in need.items() if available.get(k, 0.0) + 1e-9 < v}


def wait_for(refs: list[ray.ObjectRef], what: str, need: Bundle, timeout_s: float, report_s: float) -> None:
    """Wait until every ref is ready (placement groups' `ready()`), printing one line every `report_s` seconds
    while it pends; after `timeout_s` (0 = never) one line names the resources still missing."""
    start = time.monotonic()
    while True:
        left = timeout_s - (time.monotonic() - start) if timeout_s else math.inf
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=max(0.0, min(report_s, left)))
        if len(ready) == len(refs):
            return
        waited = time.monotonic() - start
        available, whole = ray.available_resources(), ray.cluster_resources()
        short = missing(need, available)
        if timeout_s and waited >= timeout_s - 1e-3:
            raise CdkdError(f"gave up after {waited:.0f}s (distributed.placement_timeout_s) waiting for {what}: "
                            f"missing {fmt(short)} of {fmt(need)}; the cluster has {fmt(whole)}")
        print(f"[cdkd] waiting {waited:.0f}s for {what} ({fmt(need)}; short of {fmt(short)}): the cluster has "
              f"{fmt({k: available.get(k, 0.0) for k in whole})} free of {fmt(whole)}", flush=True)


def total(bundles: list[Bundle]) -> Bundle:
    out: Bundle = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + v
    return out

