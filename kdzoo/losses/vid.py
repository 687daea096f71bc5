"""Variational information distillation (Ahn et al., CVPR 2019): the student's map, through a small
regressor, predicts the teacher's as a Gaussian with a learned per-channel variance.

``-log q(t | s) = 0.5 * ((mu(s) - t)^2 / sigma^2 + log sigma^2)`` (the constant dropped), averaged
over every element; ``sigma^2 = softplus(alpha) + eps`` per teacher channel (the authors' and
RepDistiller's parameterisation, initialised so that sigma^2 starts at 5).
"""

from __future__ import annotations

import torch
from torch import Tensor


def vid_loss(mean: Tensor, variance: Tensor, teacher_feature: Tensor) -> Tensor:
    """Mean negative log-likelihood of the teacher map under N(mean, variance) (variance (C,) or broadcastable)."""
    variance = variance.view(1, -1, 1, 1) if variance.ndim == 1 else variance
    return (0.5 * ((mean - teacher_feature.detach()).square() / variance + torch.log(variance))).mean()
