"""State a method keeps across steps about training samples: a memory bank indexed by dataset
sample (CRD, instance discrimination) and a first-in first-out queue of recent embeddings (MoCo).

Both are ``nn.Module`` s whose tensors are buffers, so they are saved in every checkpoint with the
method's modules and restored bit for bit on resume. Under torchrun every process holds the whole
state and updates it with what *every* process saw in the step (gathered in rank order first, which
is the global batch as one process would see it), so the copies stay equal without being
broadcast: :class:`ReplicatedState` tells the engine's DDP wrapper to leave their buffers alone
(broadcasting a 50,000 x 128 bank every step would cost more than the step).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kdzoo.api import KdzooError


class ReplicatedState(nn.Module):
    """Buffers that the module itself keeps equal across processes: DDP must not broadcast them."""


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(t: Tensor) -> Tensor:
    """``t`` of every process, concatenated in rank order along the first axis (``t`` itself in one
    process). Every process must pass the same shape, as the engine's equal shares of a batch do."""
    if _world() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(_world())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def mean_across(t: Tensor) -> Tensor:
    """The mean of ``t`` over processes (``t`` itself in one process)."""
    if _world() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / _world()


def local_rows(t: Tensor, rows: int) -> Tensor:
    """This process's ``rows`` of a tensor gathered by :func:`gather_rows`."""
    rank = dist.get_rank() if _world() > 1 else 0
    return t[rank * rows : (rank + 1) * rows]


def uniform_rows(rows: int, dim: int) -> Tensor:
    """The reference initialisation of a memory bank (RepDistiller's ``ContrastMemory``): uniform
    in +-1/sqrt(dim/3), drawn from the global RNG (the same on every process once seeded)."""
    bound = 1.0 / math.sqrt(dim / 3)
    return torch.rand(rows, dim).mul_(2 * bound).add_(-bound)


class SampleMemory(ReplicatedState):
    """One ``dim``-vector per training sample, updated by momentum and L2-normalised:
    ``bank[i] = normalize(momentum * bank[i] + (1 - momentum) * value)``."""

    def __init__(self, num_samples: int, dim: int, momentum: float):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("bank", uniform_rows(num_samples, dim))

    def rows(self, indices: Tensor) -> Tensor:
        """The stored vectors of ``indices`` (any shape), shaped ``(*indices.shape, dim)``."""
        return self.bank.index_select(0, indices.reshape(-1)).view(*indices.shape, self.bank.shape[1])

    @torch.no_grad()
    def update(self, indices: Tensor, values: Tensor) -> None:
        """Fold this step's ``values`` of samples ``indices`` in, from every process."""
        indices, values = gather_rows(indices), gather_rows(values.detach().to(self.bank.dtype))
        mixed = self.bank.index_select(0, indices).mul_(self.momentum).add_(values * (1 - self.momentum))
        mixed = mixed.div(mixed.pow(2).sum(1, keepdim=True).pow(0.5))
        self.bank.index_copy_(0, indices, mixed)


class EmbeddingQueue(ReplicatedState):
    """The last ``size`` vectors pushed, oldest overwritten first (MoCo's queue): negatives whose
    memory does not grow with the dataset. Starts filled as a memory bank starts."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("items", uniform_rows(size, dim))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, values: Tensor) -> None:
        """Enqueue this step's ``values`` of every process (in rank order)."""
        values = gather_rows(values.detach().to(self.items.dtype))
        size, n = self.items.shape[0], values.shape[0]
        # out of place: this step's loss saved the queue's items for its backward pass
        if n >= size:
            self.items = values[-size:].clone()
            self.pointer.zero_()
            return
        slots = (self.pointer + torch.arange(n, device=self.items.device)) % size
        self.items = self.items.index_copy(0, slots, values)
        self.pointer.copy_((self.pointer + n) % size)


def free_bytes(device: torch.device) -> int:
    """Memory still free on ``device``: the accelerator's, or the host's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(nbytes: int, device: torch.device, what: str, advice: Callable[[int], str], share: float = 0.5) -> None:
    """A one-line error when ``nbytes`` would take more than ``share`` of the memory free on
    ``device`` (the rest is the models' and their activations'); ``advice(budget_bytes)`` says what
    to change."""
    free = free_bytes(device)
    budget = int(share * free)
    if nbytes > budget:
        raise KdzooError(
            f"{what} needs {nbytes / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB is free on {device} "
            f"(at most {share:.0%} of it goes to this); {advice(budget)}"
        )
