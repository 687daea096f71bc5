"""Data parallelism on PyTorch's own engine: ``torchrun --nproc-per-node N -m kdzoo run ...``.

The student and the methods' trainable modules train under ``DistributedDataParallel`` (one wrapper
around both, rebuilt per stage since stages change what trains); the frozen teacher is replicated
without DDP. ``data.batch_size`` is the GLOBAL batch: each of the N processes takes 1/N of every
batch, augmentation is drawn for the whole batch first, and ``optim.lr`` applies to that global
batch, so N processes see exactly what one process sees. BatchNorm statistics are computed over
the global batch too (``nn.SyncBatchNorm`` on GPU, :class:`GlobalStatistics` on CPU/gloo). Loss
terms are averaged across processes for the logs; only rank 0 logs and writes files. Methods whose
loss relates samples within a batch (RKD) see the local batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kdzoo.data.batches import DistInfo
from kdzoo.toolkit.memory import ReplicatedState


@contextlib.contextmanager
def process_group_left_at_exit():
    """Leave the process group torchrun's run joined once it is over: a process exiting with its
    gloo group alive can abort in the group's teardown. After a run that finished, every process
    waits for the others first; after a failure it leaves at once (the others may never arrive)."""
    try:
        yield
    except BaseException:
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def init_from_env() -> DistInfo:
    """Join the process group torchrun set up (any launch by torchrun, one process included), or run as
    a single process. On GPUs each process first takes the GPU of its ``LOCAL_RANK``: NCCL's collectives,
    and the object collectives (``all_gather_object``), run on the current device, which would
    otherwise be every process's ``cuda:0``."""
    launched = "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ  # what torchrun sets
    if not launched and not dist.is_initialized():
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, grouped=True)


def collective_device() -> torch.device:
    """Where the default group's collectives take their tensors: this process's GPU for NCCL (which
    refuses host tensors), the host for gloo."""
    if dist.get_backend() == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class GlobalStatistics(nn.modules.batchnorm._BatchNorm):
    """Mixed into a batch-norm layer's own class (first: ``type(name, (GlobalStatistics, cls), {})``):
    in training under a process group its statistics cover the global batch of every process
    (differentiably, on CPU and GPU alike); in eval mode, or in a single process, the layer's own
    forward runs unchanged."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        y = _global_batch_norm(self, x)
        # timm's norm + activation layers (BatchNormAct2d and kin) normalise, then drop and activate
        for after in ("drop", "act"):
            module = getattr(self, after, None)
            if isinstance(module, nn.Module):
                y = module(y)
        return y


def _summed_across(t: Tensor) -> Tensor:
    """``t`` summed over every process, differentiably (the backward pass sums the gradients too)."""
    from torch.distributed._functional_collectives import all_reduce, wait_tensor

    return wait_tensor(all_reduce(t, "sum", world_group()))


def world_group() -> dist.ProcessGroup:
    """The default process group (typed optional in torch's stubs: it exists once one is initialised)."""
    group = dist.group.WORLD
    assert group is not None, "no process group is initialised"
    return group


def _global_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    dims = [0, *range(2, x.ndim)]  # every axis but the channels
    shape = [1, -1] + [1] * (x.ndim - 2)
    # two passes (mean, then squared deviations from it), as a single-process BatchNorm computes them:
    # E[x^2] - mean^2 would lose digits in float32
    n_local = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
    sums = _summed_across(torch.cat([x.sum(dim=dims), n_local]))
    count = sums[-1]
    mean = sums[:-1] / count
    var = _summed_across((x - mean.view(shape)).square().sum(dim=dims)) / count
    tracked, running_mean, running_var = bn.num_batches_tracked, bn.running_mean, bn.running_var
    if bn.track_running_stats and tracked is not None and running_mean is not None and running_var is not None:
        with torch.no_grad():
            tracked += 1
            m = bn.momentum if bn.momentum is not None else 1.0 / float(tracked)
            running_mean.mul_(1 - m).add_(m * mean.detach())
            running_var.mul_(1 - m).add_(m * var.detach() * count / torch.clamp(count - 1, min=1))
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y


_GLOBAL_CLASSES: dict[type, type] = {}


def _with_global_statistics(cls: type) -> type:
    if issubclass(cls, GlobalStatistics):
        return cls
    if cls not in _GLOBAL_CLASSES:
        _GLOBAL_CLASSES[cls] = type(f"Global{cls.__name__}", (GlobalStatistics, cls), {})
    return _GLOBAL_CLASSES[cls]


def global_batchnorm(module: nn.Module) -> nn.Module:
    """Make every batch-statistics norm layer (any ``_BatchNorm`` subclass, timm's norm+activation
    layers included) compute its statistics over all processes, so N processes train what one
    process trains. On GPUs timm's converter makes them ``SyncBatchNorm`` (keeping timm's
    activation and drop path, which torch's own converter silently drops); elsewhere each layer
    keeps its class, parameters, children and eval behaviour, with :class:`GlobalStatistics`
    mixed in."""
    if torch.cuda.is_available():
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(module)
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and not isinstance(layer, nn.SyncBatchNorm):
            layer.__class__ = _with_global_statistics(type(layer))
    return module


class TrainingStep(nn.Module):
    """Student + method modules as one module, so DDP sees every trainable parameter and the
    forward pass (the objective's step) runs inside DDP's forward."""

    def __init__(self, student: nn.Module, objective: nn.Module):
        super().__init__()
        self.student = student
        self.objective = objective

    def forward(self, batch, when):
        # on CPU DDP passes the records through as they are (device_ids is None); a GPU run moves
        # its batch to the device before the step
        return self.objective.loss(batch, when)


def wrap(module: TrainingStep, info: DistInfo, find_unused_parameters: bool) -> nn.Module:
    """``module`` under DDP. ``find_unused_parameters``: whether some trainable parameter gets no
    gradient in this stage's steps (a traversal of the autograd graph every step, needed only then;
    see :func:`reached_parameters`)."""
    from torch.nn.parallel import DistributedDataParallel

    # per-sample state keeps its copies equal itself (gathered updates): broadcasting it would cost more
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, replicated_buffers(module))
    device_ids = [info.local_rank] if torch.cuda.is_available() else None
    # gradients as views of DDP's buckets: no copy into and out of the buckets each step, the same values
    return DistributedDataParallel(
        module,
        device_ids=device_ids,
        find_unused_parameters=find_unused_parameters,
        gradient_as_bucket_view=True,
    )


def reached_parameters(loss: Tensor) -> set[int]:
    """The ids of the parameters ``loss``'s autograd graph reaches (those its backward pass gives a
    gradient). A stage's first step is run without DDP to learn them: DDP then walks the graph every
    step only when some trainable parameter is out of reach (a module whose terms this stage switches
    off), and otherwise warns on every process that the walk was for nothing."""
    found: set[int] = set()
    seen: set[object] = set()
    pending = [loss.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # an AccumulateGrad node: a leaf that gets a gradient
        if variable is not None:
            found.add(id(variable))
        pending.extend(child for child, _ in node.next_functions)
    return found


def average_gradients(parameters: list[nn.Parameter], info: DistInfo) -> None:
    """What DDP does to the gradients, for a step run without it: each the mean over the processes
    (in one all-reduce). Parameters without a gradient keep none, as they do in one process."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world
    start = 0
    for g in grads:
        g.copy_(flat[start : start + g.numel()].view_as(g))
        start += g.numel()


def replicated_buffers(module: nn.Module) -> list[str]:
    """The fully qualified names of the buffers of every :class:`~kdzoo.toolkit.ReplicatedState` in ``module``."""
    return [
        f"{prefix}.{name}" if prefix else name
        for prefix, sub in module.named_modules()
        if isinstance(sub, ReplicatedState)
        for name, _ in sub.named_buffers(recurse=False)
    ]


def mean_across(values: dict[str, Tensor], info: DistInfo) -> dict[str, Tensor]:
    if not info.enabled or not values:
        return values
    names, device = sorted(values), collective_device()
    stacked = torch.stack([torch.as_tensor(values[n], dtype=torch.float64, device=device).reshape(()) for n in names])
    dist.all_reduce(stacked)
    return {n: stacked[i].cpu() / info.world for i, n in enumerate(names)}


def any_across(flag: bool, info: DistInfo) -> bool:
    if not info.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_module_state(module: nn.Module) -> None:
    """Every process's ``module`` takes the main process's weights and buffers, sent over the process
    group (on its device): nodes need not share a filesystem, nor each hold a copy of the file."""
    device = collective_device()
    with torch.no_grad():
        for tensor in module.state_dict().values():
            sent = tensor.detach().to(device, copy=True)
            dist.broadcast(sent, src=0)
            tensor.copy_(sent)


def broadcast_from_main(value: Any, info: DistInfo) -> Any:
    """The main process's ``value`` on every process: plain data (strings, numbers, lists, dicts; a
    tuple arrives as a list), sent as JSON, so no process unpickles what another sends."""
    if not info.enabled:
        return value
    return json.loads(broadcast_bytes(json.dumps(value).encode() if info.main else None, info))


def broadcast_bytes(payload: bytes | None, info: DistInfo) -> bytes:
    """The main process's ``payload`` on every process, sent as tensors on the group's device."""
    if not info.enabled:
        assert payload is not None
        return payload
    device = collective_device()
    size = torch.tensor([len(payload) if info.main and payload is not None else 0], device=device)
    dist.broadcast(size, src=0)
    if info.main and payload is not None:
        data = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)
    else:
        data = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    dist.broadcast(data, src=0)
    return data.cpu().numpy().tobytes()


def first_failure(error: str | None, info: DistInfo) -> str | None:
    """The first process's error among every process's ``error`` (``None`` where one succeeded), named
    by its rank and host when it is another process's; ``None`` when none failed."""
    if not info.enabled:
        return error
    errors: list[tuple[str, str | None] | None] = [None] * info.world
    dist.all_gather_object(errors, (socket.gethostname(), error))
    for rank, (host, failed) in enumerate(item for item in errors if item is not None):
        if failed is not None:
            return failed if rank == info.rank else f"process {rank} on {host}: {failed}"
    return None
