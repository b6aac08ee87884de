"""Where a run's parts go, decided in one place for the job and the sweep: teachers local or in Ray actors
(`make_pool`), the engine in this process or in Ray Train workers (`launch`)."""
from __future__ import annotations

from typing import Any

from ..config import Config
from ..trainer import CheckpointStore, build, train
from .teacher_actors import RayTeacherPool
from .train import make_trainer


def make_pool(cfg: Config) -> RayTeacherPool | None:
    """The teachers in Ray actors (`teacher_pool: ray`), or None: each engine process loads its own."""
    if cfg.distributed.teacher_pool != "ray":
        return None
    return RayTeacherPool(cfg.teachers, cfg.distributed, tuple(cfg.input_shape) or None)


def launch(cfg: Config, pool: RayTeacherPool | None, *, resume: bool, threads: int = 0, with_data: bool = True,
           test: bool = True, store: CheckpointStore | None = None, callbacks: list | None = None,
           lock: bool = True) -> Any:
    """Run the engine: in this process with `distributed.workers: 0` (checkpoints in `store`, default the run
    directory; returns the result dict), else as a Ray Train run with `callbacks` (returns Ray's Result).

    `with_data=False`: no real data (no evaluation); `test=False`: no test-split evaluation (sweep trials).
    """
    if cfg.distributed.workers == 0:
        run = build(cfg, with_data=with_data, pool=pool)
        run.test = test
        return train(run, resume=resume, store=store, lock=lock)
    return make_trainer(cfg, pool, threads, with_data=with_data, test=test, callbacks=callbacks, resume=resume).fit()
