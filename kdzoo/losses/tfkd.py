"""Teacher-free KD's virtual teacher (Yuan et al., CVPR 2020, "Tf-KD_reg").

The virtual teacher puts ``correct_prob`` on the label and spreads the rest evenly over the other
classes; like the authors' code, it is softened as if it were logits, ``softmax(u / T)``, and the
student's distribution is *not* softened: ``KL(softmax(u / T) || softmax(s))``, ``batchmean``.
(The self-teacher form, Tf-KD_self, is Hinton KD from a trained copy of the student.)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def virtual_teacher(targets: Tensor, num_classes: int, correct_prob: float = 0.99) -> Tensor:
    """(B, C): ``correct_prob`` on each label, ``(1 - correct_prob) / (C - 1)`` elsewhere."""
    rest = (1.0 - correct_prob) / (num_classes - 1)
    u = F.one_hot(targets.long(), num_classes).float() * (correct_prob - rest) + rest
    return u


def virtual_teacher_loss(
    student_logits: Tensor, targets: Tensor, temperature: float = 20.0, correct_prob: float = 0.99
) -> Tensor:
    """``KL(softmax(u / T) || softmax(s))`` with ``u`` the virtual teacher, ``batchmean``."""
    u = virtual_teacher(targets, student_logits.shape[1], correct_prob).to(student_logits.dtype)
    log_p_teacher = F.log_softmax(u / temperature, dim=1)
    return F.kl_div(F.log_softmax(student_logits, dim=1), log_p_teacher, reduction="batchmean", log_target=True)
