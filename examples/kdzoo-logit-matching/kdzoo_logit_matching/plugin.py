"""Logit matching as a kdzoo method plugin: the student regresses the teacher's logits.

Ba, Caruana. "Do Deep Nets Really Need to be Deep?". NIPS 2014. https://arxiv.org/abs/1312.6184

The student mimics the teacher's logits ``z_t`` (before the softmax, where the log-probability
relations between classes are not squashed) with an L2 loss:
``L = 1 / (2B) * sum_b ||z_s(b) - z_t(b)||^2``, the paper's objective. The paper trains on it alone;
here ``ce_weight`` (default 0, the paper's setting) adds the labels, and ``warmup_epochs`` ramps the
term in linearly (default 0: off), to show where schedules belong in a plugin: in
``kdzoo_loss_weights``, never inside the loss.

Conventions: the teacher's logits carry no gradient; the term is returned unweighted as
``logit_l2``; it is computed in float32 even under mixed precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kdzoo import KdzooError, MethodInfo, hookimpl
from torch import Tensor, nn

TERM = "logit_l2"


@dataclass
class LogitMatchingConfig:
    """The defaults are the paper's: the L2 term alone, weight 1."""

    weight: float = 1.0
    ce_weight: float = 0.0
    warmup_epochs: int = 0  # linear ramp of the term over the first epochs; 0: no ramp

    def validate(self, where: str) -> None:
        """Called by kdzoo after building the config (``where`` is the section name)."""
        if self.weight < 0 or self.ce_weight < 0:
            raise KdzooError(f"config section '{where}': weights must be >= 0")
        if self.warmup_epochs < 0:
            raise KdzooError(f"config key '{where}.warmup_epochs': must be >= 0, got {self.warmup_epochs}")


def logit_l2(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``1 / (2B) * sum ||z_s - z_t||^2`` over a batch of (B, C) logits; the teacher is detached."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"logit matching needs logits of one shape, got student {tuple(student_logits.shape)} "
            f"and teacher {tuple(teacher_logits.shape)}"
        )
    diff = student_logits.float() - teacher_logits.detach().float()
    return 0.5 * diff.square().sum() / len(diff)


def ramp(epoch: int | None, warmup_epochs: int) -> float:
    """The term's factor at 0-based ``epoch``: ``min((epoch + 1) / warmup, 1)``; 1 without a warm-up."""
    if epoch is None or warmup_epochs <= 0:
        return 1.0
    return min((epoch + 1) / warmup_epochs, 1.0)


class LogitMatchingLoss(nn.Module):
    """The whole objective for your own training loop (no kdzoo engine needed)."""

    def __init__(self, weight: float = 1.0, ce_weight: float = 0.0, warmup_epochs: int = 0):
        super().__init__()
        self.config = LogitMatchingConfig(weight, ce_weight, warmup_epochs)
        self.config.validate("LogitMatchingLoss")

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor | None = None, epoch=None):
        c = self.config
        loss = c.weight * ramp(epoch, c.warmup_epochs) * logit_l2(student_logits, teacher_logits)
        if targets is not None and c.ce_weight:
            loss = loss + c.ce_weight * F.cross_entropy(student_logits, targets)
        return loss


class LogitMatching:
    """Logits only: no feature taps, no trainable modules, kdzoo's default single stage."""

    def __init__(self, config: LogitMatchingConfig):
        self.config = config

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, stage):
        if teacher is None or not stage.term_on(TERM):
            return {}
        with torch.autocast(student.logits.device.type, enabled=False):  # float32 even under bf16/fp16
            return {TERM: logit_l2(student.logits, teacher.logits)}

    @hookimpl
    def kdzoo_loss_weights(self, epoch):
        c = self.config
        return {"ce": c.ce_weight, TERM: c.weight * ramp(epoch, c.warmup_epochs)}


@hookimpl
def kdzoo_register_methods(register):
    register(
        MethodInfo(
            name="logit_matching",
            factory=LogitMatching,
            config_class=LogitMatchingConfig,
            paper="Ba, Caruana. Do Deep Nets Really Need to be Deep? NIPS 2014. arXiv:1312.6184",
            summary="regress the teacher's logits with an L2 loss (mimic learning)",
            kind="logit",
        )
    )
