"""Teachers in Ray actors: a `TeacherPool` the engine cannot tell from the in-process one.

Each actor hosts a `TeacherGroup` (one or more teachers) on its own device share; the actors are placed by
a placement group (K teachers over M actors/GPUs, spread over nodes or packed). Every pool call is one actor
call per actor, answered later (`Pending`): the engine sends each student batch as soon as it is drawn and
the generator step's input before the student steps, so the actors compute targets and the teachers'
forward while the engine draws and steps; the teachers' backward (given the student's logits) runs while
the engine takes the student-side input gradient. Tensors travel as CPU tensors through the object store.

Faults, on Ray's own mechanisms: apart from the frozen teachers (loaded in `__init__`), an actor holds only
the teachers' forward graph of the current generator step, between its two calls; the pool's objective and
input space travel with every call. Ray restarts a dead actor process (`max_restarts` =
`distributed.teacher_restarts`; `__init__` loads the teachers again) and makes the calls in flight to it again
(`max_task_retries`); a generator step whose forward was lost is made whole on the new process. The iteration
goes on with the same answers; nothing is lost. An actor that cannot come back (no restarts left) stops the
run with a `TeacherError`; the run's last checkpoint stays, and `--resume` continues from it. One that cannot
be placed again waits, like any request, until the cluster has room.
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
from .resources import fmt, num_actors, teacher_bundle, total, wait_for


@ray.remote
class TeacherActor:
    """Hosts a `TeacherGroup`, loaded in `__init__`, so a process Ray restarts loads itself again. It holds
    nothing else but the teachers' forward of the current generator step and which pool set-up (objective,
    input space) it has applied: every call carries the pool's set-up, so a restarted process applies it on
    its first call."""

    def __init__(self, specs: list[TeacherSpec], input_shape: tuple[int, ...] | None, threads: int) -> None:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
        self.device = torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
        self.step: tuple[int, GroupStep] | None = None  # (token, forward) of the generator step in progress
        self.applied = -1  # the pool set-up applied to this process
        try:
            teachers = [load_teacher(s) for s in specs]
            num_classes, shape = validate_teachers(teachers, input_shape)
        except CdkdError as e:  # reported by `info` as one line, not a remote traceback
            self.group, self.info_ = None, {"error": str(e)}
            return
        self.group = TeacherGroup(teachers).to(self.device)
        self.info_ = {"num_classes": num_classes, "input_shape": shape, "names": [t.name for t in teachers],
                      "pid": os.getpid(), "task": teachers[0].task,
                      "state_hashes": [t.state_hash for t in teachers],
                      "params": sum(p.numel() for t in teachers for p in t.parameters()),
                      "norms": [t.norm for t in teachers],
                      "node": ray.get_runtime_context().get_node_id(), "device": str(self.device)}

    def info(self) -> dict[str, Any]:
        return self.info_

    def _group(self, setup: tuple[int, PoolSpec | None, InputNorm | None] | None) -> TeacherGroup:
        """The teachers, with the pool's set-up (version, objective, input space) applied once per version."""
        if setup is not None and setup[0] != self.applied:
            version, spec, space = setup
            input_space(list(self.group.teachers), space)
            if spec is not None:
                self.group.configure(spec)
            self.applied = version
        return self.group

    def pid(self) -> int:
        return os.getpid()

    def describe(self, x: torch.Tensor, setup: Any) -> list[dict[str, Any]]:
        return self._group(setup).describe(x)

    # The per-iteration calls (one per student batch, two per generator step) skip Ray's task events (the
    # dashboard's per-task records): reporting them cost ~3% of an MNIST iteration (0.404 -> 0.391 s/it).
    # Each answers with (value, seconds computing, pid): a new pid tells the pool that Ray restarted the actor.
    @ray.method(enable_task_events=False)
    def targets(self, x: torch.Tensor, setup: Any) -> tuple[Targets, float, int]:
        t0 = time.perf_counter()
        out = self._group(setup)._targets(x).to("cpu")
        return out, time.perf_counter() - t0, os.getpid()

    @ray.method(enable_task_events=False)
    def generator_forward(self, x: torch.Tensor, y: torch.Tensor | None, spec: PoolSpec | None, token: int,
                          setup: Any) -> tuple[torch.Tensor, float, int]:
        """The teachers' forward of generator step `token`, kept for its backward; returns the logits."""
        t0 = time.perf_counter()
        self.step = (token, self._group(setup).generator_side(x, y, spec))
        return self.step[1].logits().cpu(), time.perf_counter() - t0, os.getpid()

    @ray.method(enable_task_events=False)
    def generator_backward(self, s: torch.Tensor, token: int
                           ) -> tuple[tuple[torch.Tensor, dict[str, float]] | None, float, int]:
        """sum_k g_k of step `token`, or None when this process holds no forward of it (restarted since)."""
        if self.step is None or self.step[0] != token:
            return None, 0.0, os.getpid()
        t0 = time.perf_counter()
        step, self.step = self.step[1], None
        grad, logs = step.backward(s).result()
        return (grad.cpu(), logs), time.perf_counter() - t0, os.getpid()

    def logits(self, x: torch.Tensor, setup: Any) -> torch.Tensor:
        return self._group(setup).logits(x).cpu()


def split(n: int, parts: int) -> list[range]:
    """Contiguous, near-equal index ranges: teachers 0..n-1 over `parts` actors."""
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


class RayTeacherPool:
    """K teachers over M Ray actors in one placement group. Picklable: train workers receive it as is."""

    def __init__(self, specs: list[TeacherSpec], dc: DistributedConfig,
                 input_shape: tuple[int, ...] | None = None) -> None:
        if not specs:
            raise TeacherError("no teachers given")
        self.restarts_allowed = dc.teacher_restarts
        self.restarts = 0
        self.tokens = 0  # generator steps begun (an actor pairs a backward with its forward by token)
        m = num_actors(dc, len(specs))
        self.ranges = split(len(specs), m)
        bundle = teacher_bundle(dc)
        self.pg = placement_group([dict(bundle) for _ in range(m)], strategy=dc.placement)
        try:  # pends while the cluster grows (an autoscaler adds the nodes); a line every wait_report_s
            wait_for([self.pg.ready()], f"{m} teacher actor(s) of {fmt(bundle)}, {dc.placement}",
                     total([bundle] * m), dc.placement_timeout_s, dc.wait_report_s)
        except BaseException:
            remove_placement_group(self.pg)
            raise
        threads = max(1, int(dc.teacher_cpus))
        # Faults on Ray's own mechanisms: a dead actor process is restarted (max_restarts), its __init__ loads
        # the teachers again, and the calls in flight to it are made again (max_task_retries)
        self.actors = [TeacherActor.options(num_cpus=dc.teacher_cpus, num_gpus=dc.teacher_gpus,
                                            resources=dict(dc.teacher_resources) or None,
                                            max_restarts=dc.teacher_restarts, max_task_retries=-1,
                                            scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, i))
                       .remote([specs[k] for k in r], input_shape, threads) for i, r in enumerate(self.ranges)]
        infos = ray.get([a.info.remote() for a in self.actors])
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
        self.placement = [{"node": info["node"], "device": info["device"], "teachers": info["names"],
                           "pid": info["pid"]} for info in infos]
        self.known_pids = [info["pid"] for info in infos]
        # one input space for the whole pool: the first declared normalisation in config order (as in-process)
        self.norms = [n for info in infos for n in info["norms"]]
        self.input_space = next((n for n in self.norms if n is not None), None)
        self.version = -1
        self._set_up(None)
        self.stats = {"put_s": 0.0, "wait_s": 0.0, "compute_s": 0.0}  # seconds in training calls, for the benchmark

    def _set_up(self, spec: PoolSpec | None) -> None:
        """A new set-up (objective, input space) that every later call carries, in the object store once."""
        self.version += 1
        self.setup = ray.put((self.version, spec, self.input_space))

    def configure(self, spec: PoolSpec) -> None:
        self._set_up(spec)

    def describe(self, x: torch.Tensor) -> list[dict[str, Any]]:
        x = x.detach().cpu()
        return [d for part in self._call(lambda i, a: a.describe.remote(x, self.setup)) for d in part]

    def _put(self, value: Any, timed: bool = False) -> ray.ObjectRef:
        t0 = time.perf_counter()
        ref = ray.put(value)
        if timed:
            self.stats["put_s"] += time.perf_counter() - t0
        return ref

    def _calls(self, submit: Callable[[int, Any], ray.ObjectRef], timed: bool = False) -> list["RemoteCall"]:
        """One call per actor (`submit(i, actor)` -> ref), all in flight at once. `timed` (here and in
        `_put`): count the seconds in `stats`, which the training calls do (not set-up or evaluation)."""
        return [RemoteCall(self, i, submit(i, self.actors[i]), timed) for i in range(len(self.actors))]

    def _call(self, submit: Callable[[int, Any], ray.ObjectRef]) -> list[Any]:
        """`_calls`, waited for, untimed (set-up and evaluation); results in actor order."""
        return [c.result() for c in self._calls(submit)]

    def _where(self, i: int) -> str:
        return f"teacher actor {i} ({', '.join(self.names[k] for k in self.ranges[i])})"

    def _answered_by(self, i: int, pid: int) -> None:
        """A per-iteration answer came from process `pid`: a new one means Ray restarted actor i (and made the
        calls in flight again); one line says so."""
        if pid != self.known_pids[i]:
            self.known_pids[i] = pid
            self.restarts += 1
            print(f"[cdkd] {self._where(i)} died; Ray restarted it (pid {pid}), it loaded its teachers again and "
                  f"its calls were made again ({self.restarts} restart(s) so far)", flush=True)

    def _lost(self, i: int, error: BaseException) -> TeacherError:
        return TeacherError(f"{self._where(i)} died ({first_line(error, 80)}) and could not be restarted "
                            f"(distributed.teacher_restarts={self.restarts_allowed}); the run stops at its last "
                            "checkpoint: rerun with --resume once the cluster has room for it")

    def targets(self, x: torch.Tensor) -> Pending[Targets]:
        ref = self._put(x.detach().cpu(), timed=True)
        calls = self._calls(lambda i, a: a.targets.remote(ref, self.setup), timed=True)

        def wait() -> Targets:
            parts = [c.answer() for c in calls]
            self.stats["compute_s"] += max(dt for _, dt in parts)
            return merge_targets([t for t, _ in parts])
        return Pending(wait)

    def targets_of(self, xs: list[torch.Tensor]) -> list[Pending[Targets]]:
        """One call per batch: the actors start on the first while the engine steps the student on it."""
        return [self.targets(x) for x in xs]

    def generator_side(self, x: torch.Tensor, y: torch.Tensor | None, spec: PoolSpec | None = None
                       ) -> "RemoteStep":
        return RemoteStep(self, x, y, spec)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        ref = self._put(x.detach().cpu())
        return torch.cat(self._call(lambda i, a: a.logits.remote(ref, self.setup)))

    def pids(self) -> list[int]:
        """The actors' process ids (fault tests kill them)."""
        return self._call(lambda i, a: a.pid.remote())

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        remove_placement_group(self.pg)


class RemoteCall:
    """One call to actor i, sent at once; Ray makes it again on a restarted process. `result()` waits for it;
    an actor that cannot come back is one `TeacherError` line."""

    def __init__(self, pool: RayTeacherPool, i: int, ref: ray.ObjectRef, timed: bool) -> None:
        self.pool, self.i, self.ref, self.timed = pool, i, ref, timed

    def result(self) -> Any:
        t0 = time.perf_counter()
        try:
            return ray.get(self.ref)
        except ray.exceptions.RayActorError as e:
            raise self.pool._lost(self.i, e) from None
        finally:
            if self.timed:
                self.pool.stats["wait_s"] += time.perf_counter() - t0

    def answer(self) -> tuple[Any, float]:
        """A per-iteration call's (value, compute seconds), noting which process answered."""
        value, dt, pid = self.result()
        self.pool._answered_by(self.i, pid)
        return value, dt


class RemoteStep:
    """A `TeacherStep` over the pool's actors: the forward is sent at construction, each actor keeps its
    teachers' graph until `backward(s)`; an actor restarted in between has lost it and gets both calls again."""

    def __init__(self, pool: RayTeacherPool, x: torch.Tensor, y: torch.Tensor | None, spec: PoolSpec | None) -> None:
        pool.tokens += 1
        self.pool, self.token = pool, pool.tokens
        x_ref = pool._put(x.detach().cpu(), timed=True)
        y = y.cpu() if y is not None else None
        self.send_forward = lambda i, a: a.generator_forward.remote(x_ref, y, spec, self.token, pool.setup)
        self.forward = pool._calls(self.send_forward, timed=True)

    def logits(self) -> torch.Tensor:
        parts = [c.answer() for c in self.forward]
        self.pool.stats["compute_s"] += max(dt for _, dt in parts)
        return torch.cat([t for t, _ in parts])

    def backward(self, s: torch.Tensor) -> Pending[tuple[torch.Tensor, dict[str, float]]]:
        pool, s = self.pool, s.detach().cpu()
        send = lambda i, a: a.generator_backward.remote(s[pool.ranges[i].start:pool.ranges[i].stop],  # noqa: E731
                                                        self.token)
        calls = pool._calls(send, timed=True)

        def wait() -> tuple[torch.Tensor, dict[str, float]]:
            parts, dts = [], []
            for i, call in enumerate(calls):
                out, dt = call.answer()
                while out is None:  # actor i was restarted after its forward: forward and backward again
                    RemoteCall(pool, i, self.send_forward(i, pool.actors[i]), True).answer()
                    out, dt = RemoteCall(pool, i, send(i, pool.actors[i]), True).answer()
                parts.append(out)
                dts.append(dt)
            pool.stats["compute_s"] += max(dts)
            grad = torch.stack([g for g, _ in parts]).sum(0)
            return grad, {"adv": sum(logs["adv"] for _, logs in parts), "prior": sum(logs["prior"] for _, logs in parts)}
        return Pending(wait)
