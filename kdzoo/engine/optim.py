"""Optimizers and per-step LR schedules from the ``optim`` config section."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from kdzoo.config import OptimConfig


def build_optimizer(cfg: OptimConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
    make = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return make(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(
    cfg: OptimConfig, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per batch. ``milestones`` are epochs of the stage.

    Every schedule is a closed-form function of the step, so a run resumed with more epochs
    continues on the schedule of its new length (a recursive form would carry the old length)."""
    total_steps = max(epochs * steps_per_epoch, 1)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
        )
    if cfg.scheduler == "multistep":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cfg.gamma ** sum(step >= m * steps_per_epoch for m in cfg.milestones)
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
