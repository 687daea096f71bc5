"""Data parallelism on PyTorch's own engine: ``torchrun --nproc-per-node N -m kdzoo run ...``.

The student and the methods' trainable modules train under ``DistributedDataParallel`` (one wrapper
around both, rebuilt per stage since stages change what trains); the frozen teacher is replicated
without DDP. ``data.batch_size`` is the GLOBAL batch: each of the N processes takes 1/N of every
batch, augmentation is drawn for the whole batch first, and ``optim.lr`` applies to that global
batch, so N processes see exactly what one process sees. BatchNorm statistics are computed over
the global batch too (``nn.SyncBatchNorm`` on GPU, :class:`GlobalBatchNorm` on CPU/gloo). Loss
terms are averaged across processes for the logs; only rank 0 logs and writes files. Methods whose
loss relates samples within a batch (RKD) see the local batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_from_env() -> DistInfo:
    """Join the process group torchrun set up (WORLD_SIZE > 1), or run as a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch of every process (works on CPU)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # differentiable

        # two passes (mean, then squared deviations from it), as a single-process BatchNorm computes them:
        # E[x^2] - mean^2 would lose digits in float32
        n_local = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype, device=x.device)
        sums = all_reduce(torch.cat([x.sum(dim=(0, 2, 3)), n_local]))
        count = sums[-1]
        mean = sums[:-1] / count
        var = all_reduce((x - mean.view(1, -1, 1, 1)).square().sum(dim=(0, 2, 3))) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * count / max(count - 1, 1))
        y = (x - mean.view(1, -1, 1, 1)) * torch.rsqrt(var.view(1, -1, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y


def global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a version whose statistics span all processes."""
    if torch.cuda.is_available():
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            global_batchnorm(child)
    return module


class TrainingStep(nn.Module):
    """Student + method modules as one module, so DDP sees every trainable parameter and the
    forward pass (the objective's step) runs inside DDP's forward."""

    def __init__(self, student: nn.Module, objective: nn.Module):
        super().__init__()
        self.student = student
        self.objective = objective

    def forward(self, x, y, stage, epoch, progress, teacher_out):
        total, terms, weights = self.objective.compute(x, y, stage, epoch, progress, teacher_out)
        return total, terms, weights


def wrap(student: nn.Module, objective: nn.Module, info: DistInfo) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    module = TrainingStep(student, objective)
    device_ids = [info.local_rank] if torch.cuda.is_available() else None
    # a stage may leave some trainable parameters without a gradient (a term switched off)
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


def mean_across(values: dict[str, Tensor], info: DistInfo) -> dict[str, Tensor]:
    if not info.enabled or not values:
        return values
    names = sorted(values)
    stacked = torch.stack([torch.as_tensor(values[n], dtype=torch.float64).reshape(()) for n in names])
    dist.all_reduce(stacked)
    return {n: stacked[i] / info.world for i, n in enumerate(names)}


def any_across(flag: bool, info: DistInfo) -> bool:
    if not info.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def shard(x: Tensor, info: DistInfo) -> Tensor:
    """This process's contiguous share of a global batch."""
    if not info.enabled:
        return x
    if len(x) % info.world:
        raise ValueError(f"a batch of {len(x)} does not split evenly over {info.world} processes")
    size = len(x) // info.world
    return x[info.rank * size : (info.rank + 1) * size]
