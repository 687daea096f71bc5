"""Factor transfer (Kim, Park, Kwak, NeurIPS 2018): the student's "translated" factor matches the
teacher's "paraphrased" factor.

Factors are flattened and L2-normalised per sample; the loss is the mean absolute difference
(``p = 1``, the paper's and RepDistiller's choice). The paraphraser is first trained to
reconstruct the teacher's map (mean squared error), then frozen.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def factor_loss(student_factor: Tensor, teacher_factor: Tensor) -> Tensor:
    """``mean |normalize(flatten(F_s)) - normalize(flatten(F_t))|``."""
    s = F.normalize(student_factor.flatten(1), dim=1)
    t = F.normalize(teacher_factor.flatten(1), dim=1)
    return (s - t).abs().mean()


def reconstruction_loss(reconstruction: Tensor, teacher_feature: Tensor) -> Tensor:
    """The paraphraser's pre-training objective: ``mean (rec - F_t)^2``."""
    return F.mse_loss(reconstruction, teacher_feature.detach())
