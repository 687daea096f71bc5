"""Similarity-preserving KD (Tung & Mori, ICCV 2019): the batch's pairwise similarities of one map.

``G = f f^T`` over the flattened maps (B x B, so widths and sizes may differ), each row
L2-normalised as in the paper (eq. 2) and RepDistiller; the loss is ``||G_s - G_t||_F^2 / B^2``.
(torchdistill's ``SPKDLoss`` normalises the rows with the L1 norm instead.)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def similarity_matrix(feature: Tensor) -> Tensor:
    z = feature.flatten(1)
    return F.normalize(z @ z.t(), p=2, dim=1)


def sp_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """``||G_s - G_t||_F^2 / B^2`` with row-L2-normalised Gram matrices of the flattened maps."""
    diff = similarity_matrix(student_feature) - similarity_matrix(teacher_feature.detach())
    return diff.square().sum() / len(diff) ** 2
