"""FitNets' hint term (Romero et al., ICLR 2015): the regressed student map against the teacher's."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def hint_loss(student_mapped: Tensor, teacher_feature: Tensor) -> Tensor:
    """FitNets' hint: mean squared error over every element."""
    return F.mse_loss(student_mapped, teacher_feature.detach())
