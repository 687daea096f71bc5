"""Accuracy of a model on a validation set."""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from kdzoo.engine.extract import named_forward


@torch.inference_mode()
def evaluate(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int, who: str = "model"
) -> dict[str, float]:
    """Top-1 (and top-5 when there are more than 5 classes) accuracy in percent, and mean CE."""
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
    out = {"top1": 100.0 * correct1 / max(seen, 1), "loss": loss_sum / max(seen, 1)}
    if k == 5:
        out["top5"] = 100.0 * correct_k / max(seen, 1)
    return out
