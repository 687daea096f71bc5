"""Inter-channel correlation KD (Liu et al., ICCV 2021) on one feature map.

Per sample, the C x C Gram matrix of a map's channels over its N positions, each row
L2-normalised; the loss is ``sum ||G_s - G_t||^2 / (C * B)``, the authors' CIFAR-100 code.
(torchdistill's ``ChSimLoss``, from the authors' ImageNet code, divides by ``C * B^2``: kdzoo's
value is B times theirs.) The student map must already have the teacher's channels (ICKD's
embedding does that); the spatial sizes may differ, as the Gram sums over positions.

Deep stages of small images have far fewer positions than channels (resnet18 at 32 px: N = 1,
C = 512), where B C x C matrices cost hundreds of MB. There the same sum is taken row by row,
``|a_i|^2 - 2 a_i.b_i + |b_i|^2`` of the normalised rows, from N x N products only
(``(F F^T F' F'^T)_ii``): O(C N^2) work and O(C N) memory instead of O(C^2 N) and O(C^2), in
float64, as the three terms nearly cancel once the student's rows approach the teacher's.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-12  # F.normalize's floor on a row's norm


def channel_correlation(feature: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, C): each sample's channel Gram matrix, rows L2-normalised."""
    f = feature.flatten(2)
    return F.normalize(f @ f.transpose(1, 2), p=2, dim=2, eps=_EPS)


def _gram_row_products(a: Tensor, b: Tensor) -> Tensor:
    """(B, C, N) x2 -> (B, C): row i of ``a a^T`` dotted with row i of ``b b^T``, via N x N."""
    return ((a @ (a.transpose(1, 2) @ b)) * b).sum(-1)


def _squared_row_distances(f_s: Tensor, f_t: Tensor) -> Tensor:
    ss, tt, st = _gram_row_products(f_s, f_s), _gram_row_products(f_t, f_t), _gram_row_products(f_s, f_t)
    # max(|row|, eps) with no gradient through a zero row (a channel a ReLU switched off)
    ns, nt = ss.clamp_min(_EPS * _EPS).sqrt(), tt.clamp_min(_EPS * _EPS).sqrt()
    return ss / ns.square() - 2 * st / (ns * nt) + tt / nt.square()


def ickd_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """``sum ||G_s - G_t||_F^2 / (C B)`` of the row-normalised channel Gram matrices."""
    if student_feature.shape[:2] != teacher_feature.shape[:2]:
        raise ValueError(
            f"ICKD compares maps of equal batch and channels, got {tuple(student_feature.shape[:2])} "
            f"and {tuple(teacher_feature.shape[:2])}: embed the student's map first"
        )
    b, c = student_feature.shape[:2]
    f_s, f_t = student_feature.flatten(2), teacher_feature.detach().flatten(2)
    if max(f_s.shape[2], f_t.shape[2]) < c:
        return (_squared_row_distances(f_s.double(), f_t.double()).sum() / (c * b)).to(f_s.dtype)
    diff = channel_correlation(student_feature) - channel_correlation(teacher_feature.detach())
    return diff.square().sum() / (c * b)
