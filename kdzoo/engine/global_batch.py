"""What a method sees under torchrun: the global batch, gathered from every process.

Each of N processes runs the models on its share of every global batch. A loss term that is a mean
of per-sample values is the same whether it is computed on the share (DDP then averages the
gradients) or on the whole batch; a term that relates the samples of a batch to each other (RKD's
distances, SP's Gram matrix, DIST's per-class correlations, a batch's confidence quantile) is not.
For those methods (``MethodInfo.batch == "global"``) the core gathers both models' outputs, the
labels and the sample indices from every process in rank order, which is the global batch as one
process holds it, so every process computes the term one process computes.

The student's outputs are gathered with their gradients
(:func:`torch.distributed.nn.functional.all_gather`): every process computes the same term ``L``,
and the gather's backward pass sums the N processes' identical gradients for each share, so after
DDP divides by N each share's parameters receive exactly ``dL/d(share)``; a method module applied to
the gathered outputs gets the whole ``dL/d(module)`` on every process, which DDP's average keeps.

Stacks of views (the batch followed by each extra view, :meth:`Objective.stack_views`) are gathered
view by view, so the gathered stack is again the global batch followed by each view of it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from kdzoo.api import Outputs
from kdzoo.data.batches import DistInfo, shard
from kdzoo.engine.distributed import world_group
from kdzoo.engine.extract import LazyOutputs


@torch.compiler.disable  # collectives run eagerly, between the compiled terms
def gather_blocks(t: Tensor, blocks: int, info: DistInfo) -> Tensor:
    """``t`` of every process in rank order, block by block: ``t`` holds ``blocks`` equal blocks of
    rows (views of this process's share), and the result holds each block of every process, then the
    next block. Differentiable when ``t`` requires a gradient."""
    if not info.enabled:
        return t
    from torch.distributed._functional_collectives import all_gather_single, wait_tensor

    # the functional collective is differentiable: its backward sums every process's gradient of each share
    gathered = wait_tensor(all_gather_single(t.contiguous(), 0, world_group()))
    if blocks == 1:
        return gathered
    parts = gathered.chunk(info.world)
    rows = t.shape[0] // blocks
    return torch.cat([part[b * rows : (b + 1) * rows] for b in range(blocks) for part in parts])


def map_outputs(out: Outputs, fn: Callable[[Tensor], Tensor]) -> Outputs:
    """``out`` with ``fn`` applied to every tensor it holds."""
    return Outputs(
        fn(out.logits),
        {i: fn(f) for i, f in out.features.items()},
        None if out.embedding is None else fn(out.embedding),
        {k: fn(v) for k, v in out.summaries.items()},
        {i: fn(f) for i, f in out.preact.items()},
        None if out.distillation_logits is None else fn(out.distillation_logits),
    )


class GlobalBatch:
    """One step's inputs to the methods, gathered from every process once, when a method that sees
    the global batch first reads them (a stage whose methods all see their share gathers nothing)."""

    def __init__(
        self,
        info: DistInfo,
        student: Outputs,
        teacher: Outputs | None,
        targets: Tensor,
        indices: Tensor | None,
        views: dict[str, slice],
        soft_targets: Tensor | None = None,
    ):
        blocks = len(views)
        self.student = LazyOutputs(lambda: map_outputs(_resolved(student), lambda t: gather_blocks(t, blocks, info)))
        self.teacher = None
        if teacher is not None:
            self.teacher = LazyOutputs(lambda: map_outputs(teacher, lambda t: gather_blocks(t, blocks, info)))
        self._local = (targets, indices, soft_targets)
        self._info = info
        self._gathered: tuple[Tensor, Tensor | None, Tensor | None] | None = None
        self.views = {name: slice(s.start * info.world, s.stop * info.world) for name, s in views.items()}

    def labels_and_indices(self) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The global batch's labels, sample indices and soft targets (``None`` where the batch has none)."""
        if self._gathered is None:
            targets, indices, soft = self._local
            gathered_indices = None if indices is None else gather_blocks(indices, 1, self._info)
            gathered_soft = None if soft is None else gather_blocks(soft, 1, self._info)
            self._gathered = gather_blocks(targets, 1, self._info), gathered_indices, gathered_soft
        return self._gathered


def _resolved(out: Outputs) -> Outputs:
    return out.resolved() if isinstance(out, LazyOutputs) else out


def views_of_global_batch(x: Tensor, make: Callable[[Tensor], Tensor], info: DistInfo) -> Tensor:
    """This process's rows of ``make`` applied to the global batch: a view that draws random
    augmentations draws them for the whole batch, as one process does, and each process keeps its
    share (the global RNG is seeded alike on every process, and each makes the same draws)."""
    if not info.enabled:
        return make(x)
    return shard(make(gather_blocks(x, 1, info)), info)
