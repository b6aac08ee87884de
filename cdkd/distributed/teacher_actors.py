"""Teachers in Ray actors: a `TeacherPool` the engine cannot tell from the in-process one.

Each actor hosts a `TeacherGroup` (one or more teachers) on its own device share; the actors are placed by
a placement group (K teachers over M actors/GPUs, spread over nodes or packed). Every pool call is one actor
call per actor, answered later (`Pending`): the engine sends each student batch as soon as it is drawn and
the generator step's input before the student steps, so the actors compute targets and the teachers'
forward while the engine draws and steps; the teachers' backward (given the student's logits) runs while
the engine takes the student-side input gradient. Tensors travel as CPU tensors through the object store.

Faults: apart from the frozen teachers and the configured `PoolSpec`, an actor holds only the teachers'
forward graph of the current generator step, between its two calls. A call whose actor died is made again:
Ray restarts the actor process (`distributed.teacher_restarts`), the pool reloads and reconfigures it once
per death, however many calls were in flight, and makes each of them again (a generator step whose forward
was lost is made whole on the new process). The iteration goes on with the same answers; nothing is lost.
An actor that cannot come back (no restarts left, or nowhere to place it) stops the run with a
`TeacherError`; the run's last checkpoint stays, and `--resume` continues from it.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..config import DistributedConfig, TeacherSpec
from ..errors import CdkdError, TeacherError, first_line
from ..objectives import Targets
from ..teacher_pool import GroupStep, Pending, PoolSpec, TeacherGroup, fingerprint, merge_targets
from ..teachers import InputNorm, input_space, load_teacher, validate_teachers


class NotLoaded(Exception):
    """An actor process that Ray restarted and the pool has not reloaded yet."""


@ray.remote
class TeacherActor:
    """Hosts a `TeacherGroup`; holds nothing else but the teachers' forward of the current generator step."""

    def __init__(self, threads: int) -> None:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
        self.device = torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
        self.group: TeacherGroup | None = None
        self.step: tuple[int, GroupStep] | None = None  # (token, forward) of the generator step in progress

    def load(self, specs: list[TeacherSpec], input_shape: tuple[int, ...] | None,
             space: InputNorm | None = None) -> dict[str, Any]:
        """Load and validate this actor's teachers; errors come back as a message, not a remote traceback."""
        try:
            teachers = [load_teacher(s) for s in specs]
            num_classes, shape = validate_teachers(teachers, input_shape, space)
        except CdkdError as e:
            return {"error": str(e)}
        self.group = TeacherGroup(teachers).to(self.device)
        return {"num_classes": num_classes, "input_shape": shape, "names": [t.name for t in teachers],
                "pid": os.getpid(), "task": teachers[0].task,
                "state_hashes": [t.state_hash for t in teachers],
                "params": sum(p.numel() for t in teachers for p in t.parameters()),
                "norms": [t.norm for t in teachers],
                "node": ray.get_runtime_context().get_node_id(), "device": str(self.device)}

    def _group(self) -> TeacherGroup:
        if self.group is None:
            raise NotLoaded("teacher actor restarted and not reloaded yet")
        return self.group

    def configure(self, spec: PoolSpec) -> None:
        self._group().configure(spec)

    def set_input_space(self, space: InputNorm | None) -> None:
        """The pool-wide generator input space (chosen over all actors' teachers)."""
        input_space(list(self._group().teachers), space)

    def pid(self) -> int:
        return os.getpid()

    def describe(self, x: torch.Tensor) -> list[dict[str, Any]]:
        return self._group().describe(x)

    # The per-iteration calls (one per student batch, two per generator step) skip Ray's task events (the
    # dashboard's per-task records): reporting them cost ~3% of an MNIST iteration (0.404 -> 0.391 s/it).
    @ray.method(enable_task_events=False)
    def targets(self, x: torch.Tensor) -> tuple[Targets, float]:
        t0 = time.perf_counter()
        out = self._group()._targets(x).to("cpu")
        return out, time.perf_counter() - t0

    @ray.method(enable_task_events=False)
    def generator_forward(self, x: torch.Tensor, y: torch.Tensor | None, spec: PoolSpec | None, token: int
                          ) -> tuple[torch.Tensor, float]:
        """The teachers' forward of generator step `token`, kept for its backward; returns the logits."""
        t0 = time.perf_counter()
        self.step = (token, self._group().generator_side(x, y, spec))
        return self.step[1].logits().cpu(), time.perf_counter() - t0

    @ray.method(enable_task_events=False)
    def generator_backward(self, s: torch.Tensor, token: int) -> tuple[torch.Tensor, dict[str, float]] | None:
        """sum_k g_k of step `token`, or None when this process holds no forward of it (restarted since)."""
        if self.step is None or self.step[0] != token:
            return None
        t0 = time.perf_counter()
        step, self.step = self.step[1], None
        grad, logs = step.backward(s).result()
        return grad.cpu(), {**logs, "compute_s": time.perf_counter() - t0}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._group().logits(x).cpu()


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
        self.tokens = 0  # generator steps begun (an actor pairs a backward with its forward by token)
        m = num_actors(dc, len(specs))
        self.ranges = split(len(specs), m)
        self.epochs = [0] * m  # revivals per actor: calls in flight across one death revive it once
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
            if info["task"] != ref["task"]:
                self.shutdown()
                raise TeacherError(f"teacher {info['names'][0]!r} is a {info['task']} model but "
                                   f"{ref['names'][0]!r} is a {ref['task']} model")
            if tuple(info["input_shape"]) != tuple(ref["input_shape"]):
                self.shutdown()
                raise TeacherError(f"teacher {info['names'][0]!r} expects input {tuple(info['input_shape'])} but "
                                   f"{ref['names'][0]!r} expects {tuple(ref['input_shape'])}")
        self.num_teachers = len(specs)
        self.num_classes, self.input_shape = ref["num_classes"], tuple(ref["input_shape"])
        self.task = ref["task"]
        self.names = [n for info in infos for n in info["names"]]
        self.params = sum(info["params"] for info in infos)
        self.fingerprint = fingerprint(self.names, [h for info in infos for h in info["state_hashes"]])
        self.placement = [{"node": info["node"], "device": info["device"], "teachers": info["names"]}
                          for info in infos]
        # one input space for the whole pool: the first declared normalisation in config order (as in-process)
        self.norms = [n for info in infos for n in info["norms"]]
        self.input_space = next((n for n in self.norms if n is not None), None)
        ray.get([a.set_input_space.remote(self.input_space) for a in self.actors])
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

    def _calls(self, submit: Callable[[int, Any], ray.ObjectRef], timed: bool = False) -> list["RemoteCall"]:
        """One call per actor (`submit(i, actor)` -> ref), all in flight at once. `timed` (here and in
        `_put`/`_get`): count the seconds in `stats`, which the training calls do (not set-up or evaluation)."""
        return [RemoteCall(self, i, lambda a, i=i: submit(i, a), timed) for i in range(len(self.actors))]

    def _call(self, submit: Callable[[int, Any], ray.ObjectRef]) -> list[Any]:
        """`_calls`, waited for, untimed (set-up and evaluation); results in actor order."""
        return [c.result() for c in self._calls(submit)]

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
                info = ray.get(a.load.remote([self.specs[k] for k in self.ranges[i]], self.requested_shape, self.input_space),
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
        self.epochs[i] += 1
        print(f"[cdkd] {where} died ({first_line(error, 80)}); restarted it (pid {info.get('pid')}) and retried "
              f"its call ({self.restarts} restart(s) so far)", flush=True)

    def targets(self, x: torch.Tensor) -> Pending[Targets]:
        ref = self._put(x.detach().cpu(), timed=True)
        calls = self._calls(lambda i, a: a.targets.remote(ref), timed=True)

        def wait() -> Targets:
            parts = [c.result() for c in calls]
            self.stats["compute_s"] += max(dt for _, dt in parts)
            return merge_targets([t for t, _ in parts])
        return Pending(wait)

    def generator_side(self, x: torch.Tensor, y: torch.Tensor | None, spec: PoolSpec | None = None
                       ) -> "RemoteStep":
        return RemoteStep(self, x, y, spec)

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


class RemoteCall:
    """One call to actor i, sent at once. `result()` waits for it; if the actor died, it revives the actor
    (unless another call already did since this one was sent) and makes the call again."""

    def __init__(self, pool: RayTeacherPool, i: int, submit: Callable[[Any], ray.ObjectRef], timed: bool) -> None:
        self.pool, self.i, self.submit, self.timed = pool, i, submit, timed
        self.send()

    def send(self) -> None:
        self.epoch, self.ref = self.pool.epochs[self.i], self.submit(self.pool.actors[self.i])

    def result(self) -> Any:
        while True:
            try:
                return self.pool._get(self.ref, self.timed)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                if isinstance(e, ray.exceptions.RayTaskError) and not isinstance(e.cause, NotLoaded):
                    raise
                if self.epoch == self.pool.epochs[self.i]:
                    self.pool._revive(self.i, e)
                self.send()


class RemoteStep:
    """A `TeacherStep` over the pool's actors: the forward is sent at construction, each actor keeps its
    teachers' graph until `backward(s)`; an actor restarted in between has lost it and gets both calls again."""

    def __init__(self, pool: RayTeacherPool, x: torch.Tensor, y: torch.Tensor | None, spec: PoolSpec | None) -> None:
        pool.tokens += 1
        self.pool, self.token = pool, pool.tokens
        x_ref = pool._put(x.detach().cpu(), timed=True)
        y = y.cpu() if y is not None else None
        self.send_forward = lambda i, a: a.generator_forward.remote(x_ref, y, spec, self.token)
        self.forward = pool._calls(self.send_forward, timed=True)

    def logits(self) -> torch.Tensor:
        parts = [c.result() for c in self.forward]
        self.pool.stats["compute_s"] += max(dt for _, dt in parts)
        return torch.cat([t for t, _ in parts])

    def backward(self, s: torch.Tensor) -> Pending[tuple[torch.Tensor, dict[str, float]]]:
        pool, s = self.pool, s.detach().cpu()
        send = lambda i, a: a.generator_backward.remote(s[pool.ranges[i].start:pool.ranges[i].stop],  # noqa: E731
                                                        self.token)
        calls = pool._calls(send, timed=True)

        def wait() -> tuple[torch.Tensor, dict[str, float]]:
            parts = []
            for i, call in enumerate(calls):
                out = call.result()
                while out is None:  # actor i was restarted after its forward: forward and backward again
                    RemoteCall(pool, i, lambda a: self.send_forward(i, a), True).result()
                    out = RemoteCall(pool, i, lambda a: send(i, a), True).result()
                parts.append(out)
            pool.stats["compute_s"] += max(logs["compute_s"] for _, logs in parts)
            grad = torch.stack([g for g, _ in parts]).sum(0)
            return grad, {"adv": sum(logs["adv"] for _, logs in parts), "prior": sum(logs["prior"] for _, logs in parts)}
        return Pending(wait)
