"""ReviewKD's hierarchical context loss (Chen, Liu, Zhao, Jia, "Distilling Knowledge via Knowledge
Review", CVPR 2021): at one level, the MSE of the fused student map and the teacher's map, plus the
MSE of both pooled to 4 x 4, 2 x 2 and 1 x 1 (sizes below the map's), weighted 1, 1/2, 1/4, 1/8 and
normalised by the weights' sum, as the authors' code (mdistiller's ``hcl_loss``, torchdistill's
``HierarchicalContextLoss``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdzoo.toolkit.shapes import average_pooled

PYRAMID = (4, 2, 1)


def hcl_loss(student_map: Tensor, teacher_map: Tensor, pyramid: tuple[int, ...] = PYRAMID) -> Tensor:
    """The hierarchical context loss of one level: maps of equal shape (B, C, H, W)."""
    teacher_map = teacher_map.detach()
    loss, weight, total = F.mse_loss(student_map, teacher_map), 1.0, 1.0
    for size in pyramid:
        if size >= student_map.shape[-2]:
            continue
        weight /= 2.0
        pooled = average_pooled(student_map, (size, size)), average_pooled(teacher_map, (size, size))
        loss = loss + weight * F.mse_loss(*pooled)
        total += weight
    return loss / total
