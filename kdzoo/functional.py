"""Loss building blocks shared by several methods (the methods themselves live in plugins)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def soft_target_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton's soft-target term: ``T^2 * KL(softmax(t/T) || softmax(s/T))``.

    Reduction is ``batchmean`` (sum over classes, mean over the batch), the definition of KL;
    PyTorch's default ``'mean'`` would also divide by the number of classes. The ``T^2`` factor
    keeps the soft-target gradients on the scale of the hard-label ones (Hinton et al., 2015).
    """
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)
