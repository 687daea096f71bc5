"""Curriculum temperature KD (Li et al., AAAI 2023): Hinton KD at a *learnable* temperature that is
trained adversarially (to make the KD loss harder) through a gradient reversal whose strength grows
over training.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def kl_at(student_logits: Tensor, teacher_logits: Tensor, temperature: Tensor) -> Tensor:
    """``T^2 KL(softmax(t/T) || softmax(s/T))``, batchmean, for a temperature tensor (differentiable in T)."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature.square().squeeze()


def cosine_ramp(epoch: int, epochs: int, start: float, end: float) -> float:
    """``end + (start - end) (1 + cos(pi min(epoch, epochs) / epochs)) / 2``: ``start`` at epoch 0,
    ``end`` from ``epochs`` on."""
    e = min(max(epoch, 0), epochs)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * e / max(epochs, 1)))
