"""Teachers in Ray actors: a `TeacherPool` the engine cannot tell from the in-process one.

Each actor hosts a `TeacherGroup` (one or more teachers) on its own device share; the actors are placed by
a placement group (K teachers over M actors/GPUs, spread over nodes or packed). Per iteration the pool makes
one `targets` call per actor for all student batches, streamed back batch by batch (a Ray streaming
generator), so actors compute batch i+1 while the student steps on batch i; and one `generator_side` call per
actor for the generator step (spec 7.2). Tensors travel as CPU tensors through the object store.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..config import DistributedConfig, TeacherSpec
from ..errors import CdkdError, TeacherError
from ..objectives import Targets
from ..teacher_pool import PoolSpec, TeacherGroup, fingerprint, merge_targets
from ..teachers import load_teacher, validate_teachers


@ray.remote
class TeacherActor:
    """Hosts a `TeacherGroup`; every method is stateless apart from the frozen teachers and the `PoolSpec`."""

    def __init__(self, threads: int) -> None:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
        self.device = torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
        self.group: TeacherGroup | None = None

    def load(self, specs: list[TeacherSpec], input_shape: tuple[int, ...] | None) -> dict[str, Any]:
        """Load and validate this actor's teachers; errors come back as a message, not a remote traceback."""
        try:
            teachers = [load_teacher(s) for s in specs]
            num_classes, shape = validate_teachers(teachers, input_shape)
        except CdkdError as e:
            return {"error": str(e)}
        self.group = TeacherGroup(teachers).to(self.device)
        return {"num_classes": num_classes, "input_shape": shape, "names": [t.name for t in teachers],
                "state_hashes": [t.state_hash for t in teachers],
                "params": sum(p.numel() for t in teachers for p in t.parameters()),
                "node": ray.get_runtime_context().get_node_id(), "device": str(self.device)}

    def configure(self, spec: PoolSpec) -> None:
        self.group.configure(spec)

    def describe(self, x: torch.Tensor) -> list[dict[str, Any]]:
        return self.group.describe(x)

    def targets(self, xs: list[torch.Tensor]) -> Iterator[tuple[Targets, float]]:
        for x in xs:
            t0 = time.perf_counter()
            out = self.group._targets(x).to("cpu")
            yield out, time.perf_counter() - t0

    def generator_side(self, x: torch.Tensor, s: torch.Tensor, y: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        t0 = time.perf_counter()
        grad, t, logs = self.group.generator_side(x, s, y)
        return grad.cpu(), t.cpu(), {**logs, "compute_s": time.perf_counter() - t0}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.logits(x).cpu()


def num_actors(dc: DistributedConfig, num_teachers: int) -> int:
    """`teacher_actors` actors (0 = one per teacher), never more than there are teachers."""
    return min(dc.teacher_actors or num_teachers, num_teachers)


def split(n: int, parts: int) -> list[range]:
    """Contiguous, near-equal index ranges: teachers 0..n-1 over `parts` actors."""
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


class RayTeacherPool:
    """K teachers over M Ray actors in one placement group. Picklable: train workers receive it as is."""

    def __init__(self, specs: list[TeacherSpec], dc: DistributedConfig,
                 input_shape: tuple[int, ...] | None = None, ready_timeout_s: float = 120.0) -> None:
        if not specs:
            raise TeacherError("no teachers given")
        m = num_actors(dc, len(specs))
        self.ranges = split(len(specs), m)
        bundle = {"CPU": dc.teacher_cpus, **({"GPU": dc.teacher_gpus} if dc.teacher_gpus else {}),
                  **dc.teacher_resources}
        self.pg = placement_group([dict(bundle) for _ in range(m)], strategy=dc.placement)
        try:
            ray.get(self.pg.ready(), timeout=ready_timeout_s)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.pg)
            raise CdkdError(f"the cluster cannot place {m} teacher actors of {bundle} with strategy "
                            f"{dc.placement} within {ready_timeout_s:.0f}s (cluster resources: "
                            f"{ray.cluster_resources()})") from None
        threads = max(1, int(dc.teacher_cpus))
        self.actors = [TeacherActor.options(num_cpus=dc.teacher_cpus, num_gpus=dc.teacher_gpus,
                                            resources=dict(dc.teacher_resources) or None,
                                            scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, i))
                       .remote(threads) for i in range(m)]
        infos = ray.get([a.load.remote([specs[i] for i in r], input_shape)
                         for a, r in zip(self.actors, self.ranges)])
        for info in infos:
            if "error" in info:
                self.shutdown()
                raise TeacherError(info["error"])
        ref = infos[0]
        for info in infos[1:]:
            if info["num_classes"] != ref["num_classes"]:
                self.shutdown()
                raise TeacherError(f"teacher {info['names'][0]!r} predicts {info['num_classes']} classes but "
                                   f"{ref['names'][0]!r} predicts {ref['num_classes']}")
            if tuple(info["input_shape"]) != tuple(ref["input_shape"]):
                self.shutdown()
                raise TeacherError(f"teacher {info['names'][0]!r} expects input {tuple(info['input_shape'])} but "
                                   f"{ref['names'][0]!r} expects {tuple(ref['input_shape'])}")
        self.num_teachers = len(specs)
        self.num_classes, self.input_shape = ref["num_classes"], tuple(ref["input_shape"])
        self.names = [n for info in infos for n in info["names"]]
        self.params = sum(info["params"] for info in infos)
        self.fingerprint = fingerprint(self.names, [h for info in infos for h in info["state_hashes"]])
        self.placement = [{"node": info["node"], "device": info["device"], "teachers": info["names"]}
                          for info in infos]
        self.stats = {"put_s": 0.0, "wait_s": 0.0, "compute_s": 0.0}  # seconds, for the benchmark

    def configure(self, spec: PoolSpec) -> None:
        ray.get([a.configure.remote(spec) for a in self.actors])

    def describe(self, x: torch.Tensor) -> list[dict[str, Any]]:
        return [d for part in ray.get([a.describe.remote(x.detach().cpu()) for a in self.actors]) for d in part]

    def _put(self, value: Any) -> ray.ObjectRef:
        t0 = time.perf_counter()
        ref = ray.put(value)
        self.stats["put_s"] += time.perf_counter() - t0
        return ref

    def _get(self, refs: list[ray.ObjectRef]) -> list[Any]:
        t0 = time.perf_counter()
        out = ray.get(refs)
        self.stats["wait_s"] += time.perf_counter() - t0
        return out

    def targets(self, xs: list[torch.Tensor]) -> Iterator[Targets]:
        ref = self._put([x.detach().cpu() for x in xs])
        streams = [a.targets.options(num_returns="streaming").remote(ref) for a in self.actors]
        for _ in xs:
            parts = self._get([next(s) for s in streams])
            self.stats["compute_s"] += max(c for _, c in parts)
            yield merge_targets([t for t, _ in parts])

    def generator_side(self, x: torch.Tensor, s: torch.Tensor, y: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        x_ref = self._put(x.detach().cpu())
        y = y.cpu() if y is not None else None
        s = s.detach().cpu()
        refs = [a.generator_side.remote(x_ref, s[r.start:r.stop], y) for a, r in zip(self.actors, self.ranges)]
        parts = self._get(refs)
        self.stats["compute_s"] += max(logs["compute_s"] for _, _, logs in parts)
        grad = torch.stack([g for g, _, _ in parts]).sum(0)
        t = torch.cat([t for _, t, _ in parts])
        return grad, t, {"adv": sum(p[2]["adv"] for p in parts), "prior": sum(p[2]["prior"] for p in parts)}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        ref = self._put(x.detach().cpu())
        return torch.cat(self._get([a.logits.remote(ref) for a in self.actors]))

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        remove_placement_group(self.pg)
