"""Correlation congruence (Peng et al., ICCV 2019): match the batch's sample-to-sample correlations.

On L2-normalised embeddings ``f``, the correlation of two samples is a Gaussian RBF kernel
``exp(-gamma ||f_i - f_j||^2) = exp(-2 gamma) exp(2 gamma f_i . f_j)``, approximated by the
paper's P-order Taylor expansion ``exp(-2 gamma) sum_{p=0}^{P} (2 gamma)^p / p! (f_i . f_j)^p``
(gamma = 0.4, P = 2). The loss is the paper's ``||C_s - C_t||_F^2 / B^2``. (torchdistill's
``CCKDLoss`` takes the norm without squaring it.)
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def correlation_matrix(embedding: Tensor, gamma: float = 0.4, order: int = 2, normalize: bool = True) -> Tensor:
    f = F.normalize(embedding, dim=1) if normalize else embedding
    dot = f @ f.t()
    total = 1.0 + sum(((2 * gamma) ** p / math.factorial(p)) * dot.pow(p) for p in range(1, order + 1))
    return math.exp(-2 * gamma) * total


def cc_loss(student_embedding: Tensor, teacher_embedding: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    """``||C_s - C_t||_F^2 / B^2`` with Taylor-approximated Gaussian RBF correlation matrices."""
    diff = correlation_matrix(student_embedding, gamma, order) - correlation_matrix(teacher_embedding, gamma, order)
    return diff.square().sum() / len(diff) ** 2
