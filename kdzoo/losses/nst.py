"""Neuron selectivity transfer (Huang & Wang, 2017, arXiv:1707.01219): match the distributions of
neuron activations with the squared MMD under a polynomial kernel.

Each channel's map (over H x W) is an activation pattern, L2-normalised; with ``k(x, y) = (x . y)^2``
(the paper's polynomial kernel, d = 2, c = 0), per sample
``MMD^2 = mean_ij k(t_i, t_j) + mean_ij k(s_i, s_j) - 2 mean_ij k(s_i, t_j)`` over the channels, averaged
over the batch. The larger map is average-pooled to the smaller one; channel counts may differ.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdzoo.toolkit.shapes import pooled_to_smaller


def _patterns(feature: Tensor) -> Tensor:
    return F.normalize(feature.flatten(2), dim=2)  # (B, C, HW)


def nst_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    s, t = pooled_to_smaller(student_feature, teacher_feature.detach())
    s, t = _patterns(s), _patterns(t)  # (B, C, N) with N = H x W
    c_s, c_t = s.shape[1], t.shape[1]
    if s.shape[-1] < max(c_s, c_t):
        # sum_ij (x_i . y_j)^2 = ||X Y^T||_F^2 = sum(X^T X * Y^T Y): N x N Gram matrices instead of C x C
        # kernels, each computed once (deep stages of small images have N << C); in float64, as the
        # three sums nearly cancel once the student's patterns approach the teacher's
        s, t = s.double(), t.double()
        g_s, g_t = s.transpose(1, 2) @ s, t.transpose(1, 2) @ t
        k_tt = g_t.square().sum(dim=(1, 2)) / c_t**2
        k_ss = g_s.square().sum(dim=(1, 2)) / c_s**2
        k_st = (g_s * g_t).sum(dim=(1, 2)) / (c_s * c_t)
        return (k_tt + k_ss - 2 * k_st).mean().to(student_feature.dtype)
    return _poly_kernel_mean(t, t) + _poly_kernel_mean(s, s) - 2 * _poly_kernel_mean(s, t)


def _poly_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    return (a @ b.transpose(1, 2)).square().mean()
