"""DDP in the engine (plain torch.distributed, gloo, no Ray): N ranks with one global batch = 1 rank.

Every rank draws the same global z and keeps its shard; DDP averages the shard gradients, which is the
full-batch gradient for every per-sample loss term. The batch statistics (BatchNorm in train mode in the
generator and student, and the teachers' BN-statistics prior) are all-reduced over the ranks (spec 7.4,
`cdkd.global_bn`), so 2 ranks reproduce 1 rank with real BatchNorm too.
"""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from cdkd.config import make_config
from cdkd.engine import apply_ddp
from cdkd.trainer import build
from tests.conftest import tiny_config

ITERATIONS = 2


def config(teacher_paths, w_bn: float):
    return make_config(tiny_config(teacher_paths, train={"iterations": ITERATIONS, "batch_size": 32},
                                   loss={"w_bn": w_bn}, optim={"schedule": "none"}))  # full LR: the runs move


def per_sample_batchnorm() -> None:
    """BatchNorm on running statistics even in train mode: makes every forward per-sample."""
    _BatchNorm.train = lambda self, mode=True: nn.Module.train(self, False)


def _rank(rank: int, world: int, port: int, teacher_paths, w_bn: float, per_sample: bool, out: str) -> None:
    torch.set_num_threads(1)
    if per_sample:
        per_sample_batchnorm()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        d = build(config(teacher_paths, w_bn), with_data=False).distiller
        apply_ddp(d)
        for _ in range(ITERATIONS):
            d.train_iteration()
        if rank == 0:
            torch.save(d.student.state_dict(), out)
    finally:
        dist.destroy_process_group()


def ddp_student(teacher_paths, tmp_path, world: int, w_bn: float = 0.1, per_sample: bool = False) -> dict:
    """The student after ITERATIONS iterations with `world` gloo ranks (spawned processes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / f"student-{world}-{per_sample}.pt")
    mp.spawn(_rank, args=(world, port, teacher_paths, w_bn, per_sample, out), nprocs=world)
    return torch.load(out)


def distance(a: dict, b: dict) -> float:
    keys = [k for k in b if b[k].is_floating_point() and "running" not in k]
    return torch.cat([(a[k] - b[k]).flatten() for k in keys]).norm().item()


def test_two_ranks_equal_one_with_real_batchnorm(teacher_paths, tmp_path):
    """Train-mode BN in generator and student, and the teachers' BN prior (w_bn = 0.1): global moments."""
    one = ddp_student(teacher_paths, tmp_path, world=1, w_bn=0.1)
    two = ddp_student(teacher_paths, tmp_path, world=2, w_bn=0.1)
    init = build(config(teacher_paths, 0.1), with_data=False).distiller.student.state_dict()
    assert distance(one, init) > 0.1  # the runs did move
    assert distance(two, one) < 1e-5, distance(two, one)
    running = [k for k in one if "running" in k]
    assert running and max((one[k] - two[k]).abs().max().item() for k in running) < 1e-5


def test_two_ranks_equal_one_when_every_term_is_per_sample(teacher_paths, tmp_path):
    one = ddp_student(teacher_paths, tmp_path, world=1, w_bn=0.0, per_sample=True)
    two = ddp_student(teacher_paths, tmp_path, world=2, w_bn=0.0, per_sample=True)
    init = build(config(teacher_paths, 0.0), with_data=False).distiller.student.state_dict()
    assert distance(one, init) > 0.1  # the runs did move
    assert distance(two, one) < 1e-5, distance(two, one)
