"""The flow of solution procedure (Yim et al., CVPR 2017): how one stage transforms its input.

For consecutive maps ``F1`` (B, C1, H, W) and ``F2`` (B, C2, H, W), the FSP matrix is
``G = F1^T F2 / (H W)`` (B, C1, C2); the larger map is average-pooled to the smaller, as RepDistiller
does. The loss is the paper's squared difference, averaged over the matrix entries as RepDistiller
does it: ``sum_pairs mean_(b, i, j) (G_s - G_t)^2``, i.e. the paper's ``(1/B) ||G_s - G_t||_F^2``
divided by ``C1 C2``, which keeps the initialisation stage stable at RepDistiller's learning rate.
torchdistill sums the column norms without squaring them.
"""

from __future__ import annotations

from torch import Tensor

from kdzoo.losses.shapes import pooled_to_smaller


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    first, second = pooled_to_smaller(first, second)
    a, b = first.flatten(2), second.flatten(2)
    return a @ b.transpose(1, 2) / a.shape[-1]


def fsp_loss(student_matrices: list[Tensor], teacher_matrices: list[Tensor]) -> Tensor:
    """``sum_pairs mean (G_s - G_t)^2`` over the stage pairs."""
    return sum((s - t.detach()).square().mean() for s, t in zip(student_matrices, teacher_matrices, strict=True))
