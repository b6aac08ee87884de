"""Batch statistics over the global batch of all DDP ranks, on any backend (gloo on CPU included).

With N workers each rank sees a shard of every batch, but the methods need *global* batch moments: the
generator's and the student's BatchNorm in train mode, and the teachers' BN-statistics prior (spec 7.4).
torch's SyncBatchNorm is CUDA-only, so this module all-reduces the per-channel sums itself, through the
differentiable `torch.distributed.nn.functional.all_reduce`: the gradient of every rank's loss reaches every
rank's inputs, and after DDP averages the parameter gradients, N ranks compute the 1-rank gradient.
The collectives run on their own process group, so they never interleave with DDP's gradient buckets.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.nn.functional import all_reduce
from torch.nn.modules.batchnorm import _BatchNorm

_local_only = False  # set by `local_batch_stats()` for rank-0-only work (sample grids, the probe build)


@contextmanager
def local_batch_stats() -> Iterator[None]:
    """Within this block every GlobalBatchNorm uses its own shard's statistics (no collectives): for work that
    only one rank does."""
    global _local_only
    previous, _local_only = _local_only, True
    try:
        yield
    finally:
        _local_only = previous


def global_moments(a: torch.Tensor, group: dist.ProcessGroup | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel mean and biased variance of `a` (B, C, ...) over the batch of all ranks, and that batch's
    element count per channel. Two passes (mean, then squared deviations), like torch.var_mean."""
    dims = [0] + list(range(2, a.dim()))
    group = group or dist.group.WORLD
    n = torch.tensor([a.numel() // a.shape[1]], dtype=torch.float64, device=a.device)
    dist.all_reduce(n, group=group)
    count = int(n.item())
    shape = [1, -1] + [1] * (a.dim() - 2)
    mean = all_reduce(a.sum(dims), group=group) / count
    var = all_reduce((a - mean.view(shape)).pow(2).sum(dims), group=group) / count
    return mean, var, count


class GlobalBatchNorm(_BatchNorm):
    """A BatchNorm layer whose train-mode statistics (and running-stat updates) come from the global batch."""

    def __init__(self, bn: _BatchNorm, group: dist.ProcessGroup) -> None:
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        self.load_state_dict(bn.state_dict())
        if bn.affine:  # keep the same Parameter objects (optimisers already hold them)
            self.weight, self.bias = bn.weight, bn.bias
        self.group = group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-d input, got {x.dim()}-d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _local_only:
            return super().forward(x)
        mean, var, count = global_moments(x.float(), self.group)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / max(count - 1, 1), alpha=m)
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_global_batchnorm(module: nn.Module, group: dist.ProcessGroup) -> nn.Module:
    """Replace every BatchNorm layer of `module` (in place, recursively) by a GlobalBatchNorm on `group`."""
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        return GlobalBatchNorm(module, group)
    for name, child in module.named_children():
        setattr(module, name, convert_global_batchnorm(child, group))
    return module
