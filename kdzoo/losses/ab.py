"""Activation-boundary transfer (Heo et al., AAAI 2019): the student's pre-activation map, through a
connector, should switch on exactly where the teacher's does, by a margin.

``sum [(s + m)^2 1(s > -m, t <= 0) + (s - m)^2 1(s <= m, t > 0)] / B`` per stage pair (the
authors' alternative L2), with the deeper pairs weighted more: ``2^(i - n + 1)`` for pair i of n.
"""

from __future__ import annotations

from torch import Tensor


def boundary_loss(student_preact: Tensor, teacher_preact: Tensor, margin: float = 1.0) -> Tensor:
    """The alternative L2 of one pair, summed over every element (not yet divided by the batch)."""
    s, t = student_preact, teacher_preact.detach()
    on, off = t > 0, t <= 0
    loss = (s + margin).square() * ((s > -margin) & off) + (s - margin).square() * ((s <= margin) & on)
    return loss.sum()


def ab_loss(student_preacts: list[Tensor], teacher_preacts: list[Tensor], margin: float = 1.0) -> Tensor:
    """``sum_i 2^(i - n + 1) boundary_loss_i / B`` over the n stage pairs, shallow to deep."""
    n, batch = len(student_preacts), len(student_preacts[0])
    return (
        sum(
            2.0 ** (i - n + 1) * boundary_loss(s, t, margin)
            for i, (s, t) in enumerate(zip(student_preacts, teacher_preacts, strict=True))
        )
        / batch
    )
