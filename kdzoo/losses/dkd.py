"""Decoupled KD's two terms (Zhao et al., CVPR 2022): target-class (TCKD) and non-target-class (NCKD) KD.

With ``p = softmax(z / T)`` and ``t`` the label: TCKD is ``T^2 KL(b^T || b^S)`` on the binary
distribution ``b = [p_t, 1 - p_t]``; NCKD is ``T^2 KL(p_hat^T || p_hat^S)`` on the softmax over the
C - 1 non-target classes. Both ``batchmean``; the teacher is detached. mdistiller masks the target
class by subtracting 1000 from its scaled logit; here the non-target log-probabilities are taken
exactly (a boolean mask, in log space): the same up to ``exp(-1000)``, finite when ``p_t`` is 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import full_precision


def _binary_and_non_target(log_p: Tensor, target_mask: Tensor) -> tuple[Tensor, Tensor]:
    """From log-probabilities (B, C): ``log [p_t, 1 - p_t]`` (B, 2) and ``log p_hat`` (B, C - 1)."""
    batch, classes = log_p.shape
    log_target = log_p[target_mask]  # (B,): one target per row, in row order
    log_others = log_p[~target_mask].view(batch, classes - 1)
    log_rest = torch.logsumexp(log_others, dim=1)  # log(1 - p_t), without computing 1 - p_t
    binary = torch.stack([log_target, log_rest], dim=1)
    non_target = F.log_softmax(log_others, dim=1)  # softmax over the non-target classes only
    return binary, non_target


def dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float = 4.0
) -> tuple[Tensor, Tensor]:
    """DKD's two unweighted terms ``(TCKD, NCKD)`` for one batch (Zhao et al., CVPR 2022).

    ``student_logits`` and ``teacher_logits``: (B, C) with C >= 2; ``targets``: (B,) class indices.
    Each term is ``T^2 * KL(teacher || student)`` reduced ``batchmean``; the teacher is detached.
    """
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"DKD needs (batch, classes) logits of the same shape, got student {tuple(student_logits.shape)} "
            f"and teacher {tuple(teacher_logits.shape)}"
        )
    batch, classes = student_logits.shape
    if classes < 2:
        raise ValueError("DKD needs at least 2 classes (NCKD is a distribution over the non-target ones)")
    if targets.is_floating_point() or targets.numel() != batch:
        raise ValueError(f"DKD needs one class index per sample, got targets of shape {tuple(targets.shape)}")
    t = float(temperature)
    target_mask = F.one_hot(targets.reshape(-1).long(), classes).bool()
    log_p_student = F.log_softmax(full_precision(student_logits) / t, dim=1)
    log_p_teacher = F.log_softmax(full_precision(teacher_logits.detach()) / t, dim=1)
    s_binary, s_non_target = _binary_and_non_target(log_p_student, target_mask)
    t_binary, t_non_target = _binary_and_non_target(log_p_teacher, target_mask)
    tckd = F.kl_div(s_binary, t_binary, reduction="batchmean", log_target=True) * (t * t)
    nckd = F.kl_div(s_non_target, t_non_target, reduction="batchmean", log_target=True) * (t * t)
    return tckd, nckd
