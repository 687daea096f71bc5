"""Hinton KD (Hinton, Vinyals, Dean, 2015): the softened-probability term, and the whole objective."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import soft_target_kl


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor | None = None,
    temperature: float = 4.0,
    ce_weight: float = 0.1,
    kd_weight: float = 0.9,
) -> Tensor:
    """``ce_weight * CE(s, y) + kd_weight * T^2 KL(softmax(t/T) || softmax(s/T))`` (KL ``batchmean``);
    without ``targets``, the soft-target part alone. Defaults: the CIFAR-100 reference setting."""
    loss = kd_weight * soft_target_kl(student_logits, teacher_logits, temperature)
    if targets is not None:
        loss = loss + ce_weight * F.cross_entropy(student_logits, targets)
    return loss


def standardize(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Logit standardization (Sun et al., CVPR 2024): ``(z - mean(z)) / (eps + std(z))`` per sample,
    with the unbiased standard deviation as the authors' code (and torchdistill) compute it, so the
    student matches the teacher's logit *relations*, not their scale."""
    return (logits - logits.mean(dim=-1, keepdim=True)) / (eps + logits.std(dim=-1, keepdim=True))
