"""The flow of solution procedure (Yim et al., CVPR 2017): how one stage transforms its input.

For consecutive maps ``F1`` (B, C1, H, W) and ``F2`` (B, C2, H, W), the FSP matrix is
``G = F1^T F2 / (H W)`` (B, C1, C2); the larger map is average-pooled to the smaller, as RepDistiller
does. The loss is the paper's squared difference, averaged over the matrix entries as RepDistiller
does it: ``sum_pairs mean_(b, i, j) (G_s - G_t)^2``, i.e. the paper's ``(1/B) ||G_s - G_t||_F^2``
divided by ``C1 C2``, which keeps the initialisation stage stable at RepDistiller's learning rate.
torchdistill sums the column norms without squaring them.

Deep stages of small images have few positions N and many channels: there the C1 x C2 matrices
(B x 256 x 512 for a resnet's last flow, from maps of one position) cost far more than the maps
themselves. :func:`fsp_flow_loss` then takes the same sum from N x N Gram matrices,
``||G_s - G_t||^2 = sum(A_s^T A_s * B_s^T B_s) / N_s^2 - 2 sum(A_s^T A_t * B_s^T B_t) / (N_s N_t)
+ sum(A_t^T A_t * B_t^T B_t) / N_t^2`` with ``A``, ``B`` the flattened first and second maps, in
float64: the three sums nearly cancel once the student's flows approach the teacher's.
"""

from __future__ import annotations

from torch import Tensor

from kdzoo.toolkit.shapes import pooled_to_smaller


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    first, second = pooled_to_smaller(first, second)
    a, b = first.flatten(2), second.flatten(2)
    return a @ b.transpose(1, 2) / a.shape[-1]


def _squared_norm_of_difference(a_s: Tensor, b_s: Tensor, a_t: Tensor, b_t: Tensor) -> Tensor:
    """``||A_s B_s^T / N_s - A_t B_t^T / N_t||_F^2`` per sample, from N x N products only."""
    n_s, n_t = a_s.shape[-1], a_t.shape[-1]

    def inner(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:  # <A B^T, C D^T> per sample
        return ((a.transpose(1, 2) @ c) * (b.transpose(1, 2) @ d)).sum(dim=(1, 2))

    ss, tt, st = inner(a_s, b_s, a_s, b_s), inner(a_t, b_t, a_t, b_t), inner(a_s, b_s, a_t, b_t)
    return ss / n_s**2 - 2 * st / (n_s * n_t) + tt / n_t**2


def fsp_flow_loss(s_first: Tensor, s_second: Tensor, t_first: Tensor, t_second: Tensor) -> Tensor:
    """``mean (G_s - G_t)^2`` of one flow: two consecutive maps of the student and of the teacher."""
    t_first, t_second = t_first.detach(), t_second.detach()
    c1, c2 = s_first.shape[1], s_second.shape[1]
    n = sum(min(a.shape[-2:].numel(), b.shape[-2:].numel()) for a, b in ((s_first, s_second), (t_first, t_second)))
    if (c1 + c2) * n >= c1 * c2:  # the C1 x C2 matrices are the cheaper route
        return fsp_loss([fsp_matrix(s_first, s_second)], [fsp_matrix(t_first, t_second)])
    s1, s2 = pooled_to_smaller(s_first.double(), s_second.double())
    t1, t2 = pooled_to_smaller(t_first.double(), t_second.double())
    a_s, b_s, a_t, b_t = (x.flatten(2) for x in (s1, s2, t1, t2))
    return (_squared_norm_of_difference(a_s, b_s, a_t, b_t).mean() / (c1 * c2)).to(s_first.dtype)


def fsp_loss(student_matrices: list[Tensor], teacher_matrices: list[Tensor]) -> Tensor:
    """``sum_pairs mean (G_s - G_t)^2`` over the stage pairs."""
    return sum((s - t.detach()).square().mean() for s, t in zip(student_matrices, teacher_matrices, strict=True))
