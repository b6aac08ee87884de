"""Teachers in Ray actors: a `TeacherPool` the engine cannot tell from the in-process one.

Each actor hosts a `TeacherGroup` (one or more teachers) on its own device share; the actors are placed by
a placement group (K teachers over M actors/GPUs, spread over nodes or packed). Per iteration the pool makes
one `targets` call per actor for all student batches, streamed back batch by batch (a Ray streaming
generator), so actors compute batch i+1 while the student steps on batch i; and one `generator_side` call per
actor for the generator step (spec 7.2). Tensors travel as CPU tensors through the object store.

Faults: the actors are stateless between calls (frozen teachers + the configured `PoolSpec`), so a call whose
actor died is simply made again. Ray restarts the actor process (`distributed.teacher_restarts`), the pool
reloads and reconfigures it and retries the call: the iteration goes on with the same answers, nothing
is lost. An actor that cannot come back (no restarts left, or nowhere to place it) stops the run with a
`TeacherError`; the run's last checkpoint stays, and `--resume` continues from it.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterator

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..config import DistributedConfig, TeacherSpec
from ..errors import CdkdError, TeacherError, first_line
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
                "pid": os.getpid(),
                "state_hashes": [t.state_hash for t in teachers],
                "params": sum(p.numel() for t in teachers for p in t.parameters()),
                "node": ray.get_runtime_context().get_node_id(), "device": str(self.device)}

    def configure(self, spec: PoolSpec) -> None:
        self.group.configure(spec)

    def pid(self) -> int:
        return os.getpid()

    def describe(self, x: torch.Tensor) -> list[dict[str, Any]]:
        return self.group.describe(x)

    def targets(self, xs: list[torch.Tensor]) -> Iterator[tuple[Targets, float]]:
        for x in xs:
            t0 = time.perf_counter()
            out = self.group._targets(x).to("cpu")
            yield out, time.perf_counter() - t0

    def generator_side(self, x: torch.Tensor, s: torch.Tensor, y: torch.Tensor | None, spec: PoolSpec | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        t0 = time.perf_counter()
        grad, t, logs = self.group.generator_side(x, s, y, spec)
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
        self.specs, self.requested_shape, self.ready_timeout_s = list(specs), input_shape, ready_timeout_s
        self.spec: PoolSpec | None = None  # the configured objective, given again to a restarted actor
        self.restarts = 0
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
                                            max_restarts=dc.teacher_restarts, max_task_retries=0,
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
        self.stats = {"put_s": 0.0, "wait_s": 0.0, "compute_s": 0.0}  # seconds in training calls, for the benchmark

    def configure(self, spec: PoolSpec) -> None:
        self.spec = spec
        self._call(lambda i, a: a.configure.remote(spec))

    def describe(self, x: torch.Tensor) -> list[dict[str, Any]]:
        x = x.detach().cpu()
        return [d for part in self._call(lambda i, a: a.describe.remote(x)) for d in part]

    def _put(self, value: Any, timed: bool = False) -> ray.ObjectRef:
        t0 = time.perf_counter()
        ref = ray.put(value)
        if timed:
            self.stats["put_s"] += time.perf_counter() - t0
        return ref

    def _get(self, ref: ray.ObjectRef, timed: bool = False) -> Any:
        t0 = time.perf_counter()
        try:
            return ray.get(ref)
        finally:
            if timed:
                self.stats["wait_s"] += time.perf_counter() - t0

    def _call(self, submit: Callable[[int, Any], ray.ObjectRef], timed: bool = False) -> list[Any]:
        """One call per actor (`submit(i, actor)` -> ref), all in flight at once; results in actor order.

        A call whose actor died is made again once `_revive` has brought the actor back. `timed` (here and in
        `_put`/`_get`): count the seconds in `stats`, which the training calls do (not set-up or evaluation).
        """
        refs = [submit(i, a) for i, a in enumerate(self.actors)]
        out = []
        for i, ref in enumerate(refs):
            while True:
                try:
                    out.append(self._get(ref, timed))
                    break
                except ray.exceptions.RayActorError as e:
                    self._revive(i, e)
                    ref = submit(i, self.actors[i])
        return out

    def _revive(self, i: int, error: BaseException) -> None:
        """Bring actor i back after it died (Ray restarts its process): reload its teachers, give it the
        configured objective. One log line; a `TeacherError` when it cannot come back."""
        names = [self.names[k] for k in self.ranges[i]] if hasattr(self, "names") else []
        where = f"teacher actor {i} ({', '.join(names)})"
        self.restarts += 1
        a, deadline = self.actors[i], time.monotonic() + self.ready_timeout_s
        while True:  # calls fail fast with ActorUnavailableError while Ray restarts the process: retry them
            try:
                left = max(deadline - time.monotonic(), 0.1)
                info = ray.get(a.load.remote([self.specs[k] for k in self.ranges[i]], self.requested_shape),
                               timeout=left)
                if self.spec is not None:
                    ray.get(a.configure.remote(self.spec), timeout=left)
                break
            except ray.exceptions.ActorUnavailableError as e:
                if time.monotonic() < deadline:
                    time.sleep(0.2)  # backoff between attempts, not synchronisation
                    continue
                last = e
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:  # no restarts left, no room
                last = e
            raise TeacherError(f"{where} died ({first_line(error, 80)}) and could not be restarted within "
                               f"{self.ready_timeout_s:.0f}s ({first_line(last, 80)}); the run stops at its last "
                               "checkpoint: rerun with --resume once the cluster has room for it") from None
        if "error" in info:  # restarted, but its teachers no longer load
            raise TeacherError(f"{where} was restarted but cannot load its teachers: {info['error']}")
        print(f"[cdkd] {where} died ({first_line(error, 80)}); restarted it (pid {info.get('pid')}) and retried "
              f"its call ({self.restarts} restart(s) so far)", flush=True)

    def targets(self, xs: list[torch.Tensor]) -> Iterator[Targets]:
        xs = [x.detach().cpu() for x in xs]
        ref = self._put(xs, timed=True)
        streams = [a.targets.options(num_returns="streaming").remote(ref) for a in self.actors]
        for j in range(len(xs)):
            parts = []
            for i in range(len(self.actors)):
                while True:
                    try:
                        parts.append(self._get(next(streams[i]), timed=True))
                        break
                    except ray.exceptions.RayActorError as e:  # the rest of this actor's batches, again
                        self._revive(i, e)
                        streams[i] = self.actors[i].targets.options(num_returns="streaming").remote(xs[j:])
            self.stats["compute_s"] += max(c for _, c in parts)
            yield merge_targets([t for t, _ in parts])

    def generator_side(self, x: torch.Tensor, s: torch.Tensor, y: torch.Tensor | None, spec: PoolSpec | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        x_ref = self._put(x.detach().cpu(), timed=True)
        y = y.cpu() if y is not None else None
        s = s.detach().cpu()
        parts = self._call(lambda i, a: a.generator_side.remote(x_ref, s[self.ranges[i].start:self.ranges[i].stop],
                                                                y, spec), timed=True)
        self.stats["compute_s"] += max(logs["compute_s"] for _, _, logs in parts)
        grad = torch.stack([g for g, _, _ in parts]).sum(0)
        t = torch.cat([t for _, t, _ in parts])
        return grad, t, {"adv": sum(p[2]["adv"] for p in parts), "prior": sum(p[2]["prior"] for p in parts)}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        ref = self._put(x.detach().cpu())
        return torch.cat(self._call(lambda i, a: a.logits.remote(ref)))

    def pids(self) -> list[int]:
        """The actors' process ids (fault tests kill them)."""
        return self._call(lambda i, a: a.pid.remote())

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        remove_placement_group(self.pg)
