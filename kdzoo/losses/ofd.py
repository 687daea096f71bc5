"""A comprehensive overhaul of feature distillation (Heo et al., ICCV 2019): the student's
pre-ReLU map, through a connector, regresses the teacher's pre-ReLU map with a *partial* L2.

The teacher's negative responses matter only as "off": its map is clamped from below at a
per-channel margin ``m = E[t | t < 0]`` (``t' = max(t, m)``), and positions where the student is
already below an "off" target cost nothing: ``sum (s - t')^2 1(s > t' or t' > 0)``. Pairs are
summed with the shallower ones halved per step (``/ 2^(n - i - 1)``), then divided by the batch.
"""

from __future__ import annotations

from torch import Tensor


def negative_margin(teacher_preact: Tensor) -> Tensor:
    """Per channel, ``E[t | t < 0]`` over batch and positions (0 for a channel with no negative value)."""
    t = teacher_preact.detach().transpose(0, 1).flatten(1)  # (C, B*H*W)
    negative = t < 0
    return (t * negative).sum(1) / negative.sum(1).clamp(min=1)


def partial_l2(student_preact: Tensor, teacher_preact: Tensor, margin: Tensor) -> Tensor:
    """One pair: ``sum (s - max(t, m))^2`` where ``s > max(t, m)`` or ``max(t, m) > 0``."""
    target = teacher_preact.detach().maximum(margin.view(1, -1, 1, 1))
    return ((student_preact - target).square() * ((student_preact > target) | (target > 0))).sum()


def ofd_loss(student_preacts: list[Tensor], teacher_preacts: list[Tensor], margins: list[Tensor]) -> Tensor:
    """``sum_i partial_l2_i / 2^(n - i - 1) / B`` over the n stage pairs, shallow to deep."""
    n, batch = len(student_preacts), len(student_preacts[0])
    return (
        sum(
            partial_l2(s, t, m) / 2.0 ** (n - i - 1)
            for i, (s, t, m) in enumerate(zip(student_preacts, teacher_preacts, margins, strict=True))
        )
        / batch
    )
