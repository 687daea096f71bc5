"""DIST (Huang et al., NeurIPS 2022) and DIST+ (TPAMI 2025): relations, not values, of predictions.

DIST matches the Pearson correlation of the softened class probabilities between teacher and
student: across classes for each sample (inter-class) and across samples for each class
(intra-class), ``tau^2 (1 - mean correlation)`` each. DIST+ adds two relations on a pair of feature
maps of equal shape: the correlation along channels at every position (channel relation) and the
inter-sample correlation of the channel-summed maps at every position (spatial relation), each as
``1 - mean correlation``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pearson(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Row-wise Pearson correlation of two (N, D) matrices, (N,)."""
    return F.cosine_similarity(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True), eps=eps)


def _probabilities(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    return (student_logits / tau).softmax(dim=1), (teacher_logits.detach() / tau).softmax(dim=1)


def dist_inter_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0, eps: float = 1e-8) -> Tensor:
    """``tau^2 (1 - mean_i pearson(p_s[i], p_t[i]))``: per sample, across classes."""
    y_s, y_t = _probabilities(student_logits, teacher_logits, tau)
    return tau**2 * (1 - pearson(y_s, y_t, eps).mean())


def dist_intra_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0, eps: float = 1e-8) -> Tensor:
    """``tau^2 (1 - mean_c pearson(p_s[:, c], p_t[:, c]))``: per class, across the batch."""
    y_s, y_t = _probabilities(student_logits, teacher_logits, tau)
    return tau**2 * (1 - pearson(y_s.t(), y_t.t(), eps).mean())


def dist_losses(student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0, eps: float = 1e-8):
    """``(inter, intra)`` from one softmax per model (what the DIST method computes each step)."""
    y_s, y_t = _probabilities(student_logits, teacher_logits, tau)
    return tau**2 * (1 - pearson(y_s, y_t, eps).mean()), tau**2 * (1 - pearson(y_s.t(), y_t.t(), eps).mean())


def channel_relation_loss(student_feature: Tensor, teacher_feature: Tensor, eps: float = 1e-8) -> Tensor:
    """``1 - mean over (sample, position) of the Pearson correlation along channels`` of two (B, C, H, W)
    maps of the same shape."""
    s = student_feature - student_feature.mean(dim=1, keepdim=True)
    t = teacher_feature.detach()
    t = t - t.mean(dim=1, keepdim=True)
    correlation = (s * t).sum(dim=1) / (torch.sqrt(s.square().sum(dim=1) * t.square().sum(dim=1)) + eps)
    return 1 - correlation.mean()


def spatial_relation_loss(student_feature: Tensor, teacher_feature: Tensor, eps: float = 1e-8) -> Tensor:
    """``1 - mean over positions of the Pearson correlation across the batch`` of the channel-summed maps."""
    s = student_feature.sum(dim=1).flatten(1)
    t = teacher_feature.detach().sum(dim=1).flatten(1)
    return 1 - pearson(s.t(), t.t(), eps).mean()
