"""MLKD's multi-level alignment of predictions (Jin, Wang, Lin, "Multi-Level Logit Distillation",
CVPR 2023; the authors' ``mdistiller/distillers/KD_ours.py``), on tensors.

With ``p = softmax(z / T)`` (B x C): instance level, the KD term ``T^2 KL(p_t || p_s)`` (batchmean);
batch level, the B x B Gram matrices of the predictions, ``||p_t p_t^T - p_s p_s^T||^2 / B``; class
level, the C x C Gram matrices, ``||p_t^T p_t - p_s^T p_s||^2 / C``. The confidence masks keep the
lower half of the teacher's confidences (per sample, and per class summed over the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import full_precision, soft_target_kl


def batch_level_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``sum((p_t p_t^T - p_s p_s^T)^2) / B``: how alike the predictions of each pair of samples are."""
    p_s = F.softmax(full_precision(student_logits) / temperature, dim=1)
    p_t = F.softmax(full_precision(teacher_logits.detach()) / temperature, dim=1)
    return (p_t @ p_t.T - p_s @ p_s.T).pow(2).sum() / p_s.shape[0]


def class_level_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``sum((p_t^T p_t - p_s^T p_s)^2) / C``: how the batch's predictions of each pair of classes co-occur."""
    p_s = F.softmax(full_precision(student_logits) / temperature, dim=1)
    p_t = F.softmax(full_precision(teacher_logits.detach()) / temperature, dim=1)
    return (p_t.T @ p_t - p_s.T @ p_s).pow(2).sum() / p_s.shape[1]


def instance_level_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """The KD term at ``temperature``: ``T^2 KL(p_t || p_s)``, batchmean."""
    return soft_target_kl(full_precision(student_logits), full_precision(teacher_logits), temperature)


def confidence_fractions(teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """The fractions of samples and of classes at or below the median teacher confidence (max
    probability per sample; probability summed over the batch per class), at temperature 1. The
    authors multiply their already-averaged terms by these masks and average again: the masks
    scale the terms by these fractions (about 1/2), they select nothing."""
    p_t = F.softmax(full_precision(teacher_logits.detach()), dim=1)
    confidence, class_confidence = p_t.max(dim=1).values, p_t.sum(dim=0)
    samples = (confidence <= torch.quantile(confidence, 0.5)).float().mean()
    classes = (class_confidence <= torch.quantile(class_confidence, 0.5)).float().mean()
    return samples, classes
