"""Accuracy of a model on a validation set, in one process or shared among a run's processes."""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kdzoo.data.batches import Batches, DistInfo
from kdzoo.engine.distributed import collective_device
from kdzoo.engine.extract import named_forward


def evaluate(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int, who: str = "model"
) -> dict[str, float]:
    """Top-1 (and top-5 when there are more than 5 classes) accuracy in percent, and mean CE."""
    return _scores(_counts(model, batches, num_classes, who), num_classes)


def evaluate_across(
    model: nn.Module, data: Batches, num_classes: int, info: DistInfo, who: str = "model"
) -> dict[str, float]:
    """:func:`evaluate` over ``data`` with each process of a run scoring its share of the batches
    (:meth:`~kdzoo.data.batches.Batches.evaluation_share`) and the counts summed over the processes:
    one process's top-1 and top-5 exactly, and its mean CE up to the order of the sums. Every process
    must call it (a collective); without a process group it is :func:`evaluate`."""
    if not info.enabled:
        return evaluate(model, data.epoch(0), num_classes, who)
    counts = _counts(model, data.evaluation_share(info), num_classes, who)
    # float64 holds the counts exactly (to 2**53) and the CE sums as one process adds them
    summed = torch.tensor(counts, dtype=torch.float64, device=collective_device())
    dist.all_reduce(summed)
    return _scores(summed.tolist(), num_classes)


@torch.inference_mode()
def _counts(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int, who: str) -> list[float]:
    """Top-1 hits, top-k hits, summed CE and samples seen over ``batches``."""
    was_training = model.training
    model.eval()
    k = 5 if num_classes > 5 else 1
    correct1 = correct_k = loss_sum = 0.0
    seen = 0
    dtype = next(model.parameters(), torch.empty(0)).dtype
    for x, y in batches:
        if dtype == torch.float64 and x.is_floating_point():  # a train.precision=fp64 model
            x = x.to(dtype)
        logits = named_forward(who, functools.partial(model, x), x)
        loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(k, dim=1).indices
        hits = top.eq(y.unsqueeze(1))
        correct1 += hits[:, 0].sum().item()
        correct_k += hits.any(dim=1).sum().item()
        seen += len(y)
    model.train(was_training)
    return [correct1, correct_k, loss_sum, float(seen)]


def _scores(counts: list[float], num_classes: int) -> dict[str, float]:
    correct1, correct_k, loss_sum, seen = counts
    out = {"top1": 100.0 * correct1 / max(seen, 1), "loss": loss_sum / max(seen, 1)}
    if num_classes > 5:
        out["top5"] = 100.0 * correct_k / max(seen, 1)
    return out
