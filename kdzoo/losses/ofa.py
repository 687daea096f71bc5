"""The OFA loss (Hao, Guo, Han, Tang, Hu, Wang, Xu, "One-for-All: Bridge the Gap Between
Heterogeneous Architectures in Knowledge Distillation", NeurIPS 2023; the authors' ``ofa_loss`` in
``distillers/ofa.py`` of github.com/Hao840/OFAKD).

With ``p_t = softmax(t / T)``, ``p_s = softmax(s / T)`` and ``y`` the one-hot label mask, per sample
``-sum_c ((p_t + y)^eps - y) log p_s``, averaged over the batch. ``eps = 1`` is the cross-entropy
with the teacher's distribution; ``eps > 1`` raises the target class's weight to
``(1 + p_t[y])^eps - 1``, the more so the surer the teacher is ("adaptive target enhancement"),
and bends the non-target weights to ``p_t^eps``. As in the authors' code there is no ``T^2``
factor. ``log p_s`` is taken with ``log_softmax`` where the authors write ``log(softmax(.))``: the
same wherever theirs is finite, and finite where a probability underflows to 0.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import full_precision


def ofa_loss(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, eps: float = 1.0, temperature: float = 1.0
) -> Tensor:
    """The OFA loss of one head: ``mean_b sum_c -((p_t + y)^eps - y) log p_s``.

    ``student_logits`` and ``teacher_logits``: (B, C); ``targets``: (B,) class indices, or (B, C)
    soft labels (mixup, label smoothing), whose argmax is the class, as the authors do. The teacher
    is detached; the loss is computed in float32.
    """
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"OFA needs (batch, classes) logits of the same shape, got student {tuple(student_logits.shape)} "
            f"and teacher {tuple(teacher_logits.shape)}"
        )
    batch, classes = student_logits.shape
    labels = targets.argmax(dim=1) if targets.ndim == 2 else targets.reshape(-1)
    if labels.is_floating_point() or labels.numel() != batch:
        raise ValueError(
            f"OFA needs one class index (or one row of soft labels) per sample, got {tuple(targets.shape)}"
        )
    t = float(temperature)
    mask = F.one_hot(labels.long(), classes).float()
    p_teacher = F.softmax(full_precision(teacher_logits.detach()) / t, dim=1)
    log_p_student = F.log_softmax(full_precision(student_logits) / t, dim=1)
    weights = (p_teacher + mask).pow(eps) - mask
    return -(weights * log_p_student).sum(dim=1).mean()
