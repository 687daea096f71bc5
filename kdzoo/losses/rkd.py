"""Relational KD's two terms on embeddings (Park et al., CVPR 2019), from Gram matrices.

Distance-wise: pairwise Euclidean distances divided by their mean over distinct pairs, smooth-L1
between student and teacher. Angle-wise: the cosine at anchor i between e_j - e_i and e_k - e_i
for every triplet, smooth-L1, the mean over all B^3 triplets. Teacher terms carry no gradient.
``<e_j - e_i, e_k - e_i> = G_jk - G_ij - G_ik + G_ii``, so the angle term needs B x B x B
scalars, never the reference's B x B x D difference tensor; they are made a block of anchors at a
time and the gradient is reduced to B x B matrices in the same pass (:class:`_AngleTerm`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-12
# B x B x B scalars made at once per block of anchors. On a CPU, blocks of 2^18 floats (1 MB) stay
# in cache: the fastest of 2^16..2^20 for B = 64..256 (at B = 256, 1.9x faster than 2^20); on a
# GPU, 2^22 (16 MB) keeps B <= 128 in one block and a few beyond, so launches stay few.
ANGLE_BLOCK_ELEMENTS = {"cpu": 2**18}
GPU_ANGLE_BLOCK_ELEMENTS = 2**22


@dataclass
class Relations:
    """What both RKD terms need from one batch of embeddings, computed once per model and step."""

    gram: Tensor  # (B, B) inner products
    distances: Tensor  # (B, B) Euclidean, exact zero diagonal, >= sqrt(eps) elsewhere

    @classmethod
    def of(cls, e: Tensor) -> Relations:
        gram = e @ e.t()
        sq = gram.diagonal()
        d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * gram).clamp(min=_EPS).sqrt()
        return cls(gram, d * _off_diagonal(len(e), e))

    def normalised_distances(self) -> Tensor:
        # every off-diagonal distance is > 0 (clamped), so the reference's mean over d > 0 is the
        # off-diagonal mean; dividing by a count avoids boolean indexing, a host sync on CUDA
        b = len(self.distances)
        return self.distances / (self.distances.sum() / max(b * (b - 1), 1))

    def inverse_distances(self) -> Tensor:
        """1 / d, with 0 on the diagonal (where the difference vector is zero)."""
        return _off_diagonal(len(self.distances), self.distances) / self.distances.clamp(min=_EPS)


def _off_diagonal(b: int, like: Tensor) -> Tensor:
    return 1.0 - torch.eye(b, device=like.device, dtype=like.dtype)


def pairwise_distances(e: Tensor) -> Tensor:
    """Euclidean distances (B, B) with an exact zero diagonal."""
    return Relations.of(e).distances


def normalised_distances(e: Tensor) -> Tensor:
    """Distances divided by their mean over distinct pairs (RKD's scale-free distance)."""
    return Relations.of(e).normalised_distances()


def _anchor_cosines(gram: Tensor, inv: Tensor, start: int, stop: int, in_place: bool = False) -> Tensor:
    """Rows ``start:stop`` (anchors i) of the triplet cosines, shape (stop - start, B, B).

    ``in_place`` scales the block in its own memory: fewer passes, for callers outside autograd.
    """
    g_i = gram[start:stop]
    # dot[i, j, k] = G_jk - G_ij - G_ik + G_ii = G_jk - a_ij - a_ik with a_ij = G_ij - G_ii / 2
    a_i = g_i - 0.5 * g_i.diagonal(offset=start).unsqueeze(1)
    inv_i = inv[start:stop]
    if in_place:  # one B^3 allocation instead of three
        dot = (a_i.unsqueeze(2) + a_i.unsqueeze(1)).neg_().add_(gram)
        return dot.mul_(inv_i.unsqueeze(2)).mul_(inv_i.unsqueeze(1))
    dot = gram.unsqueeze(0) - (a_i.unsqueeze(2) + a_i.unsqueeze(1))
    return dot * inv_i.unsqueeze(2) * inv_i.unsqueeze(1)


def triplet_cosines(e: Tensor) -> Tensor:
    """cos of the angle at i between e_j - e_i and e_k - e_i, shape (B, B, B); 0 where j or k == i."""
    relations = Relations.of(e)
    return _anchor_cosines(relations.gram, relations.inverse_distances(), 0, len(e))


class _AngleTerm(torch.autograd.Function):
    """Sum of smooth-L1 over the triplet cosines, with its gradient formed in the forward pass.

    The gradient with respect to the (B, B) Gram and inverse-distance matrices is a handful of
    reductions of the B x B x B residuals, so the forward pass makes the cosines one block of
    anchors at a time, reduces them to (B, B) gradient matrices, and keeps only those for the
    backward pass: no B^3 tensor outlives its block, and nothing is recomputed. With
    ``dot[i,j,k] = G_jk - G_ij - G_ik + G_ii``, ``c = dot * inv_ij * inv_ik`` and
    ``r = clamp(c_s - c_t, -1, 1)`` (smooth-L1's slope), and ``h = r * inv_ij * inv_ik``
    (symmetric in j, k):
    ``dG = sum_i h[i] - 2 sum_k h[:, :, k] + diag(sum_jk h)`` and
    ``dinv_ij = 2 sum_k r_ijk dot_ijk inv_ik = 2 sum_k (r c)_ijk / inv_ij``.
    """

    @staticmethod
    def forward(ctx, s_gram: Tensor, s_inv: Tensor, t_gram: Tensor, t_inv: Tensor, block: int) -> Tensor:
        b = len(s_gram)
        total = s_gram.new_zeros(())
        trains = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        d_gram = torch.zeros_like(s_gram) if trains else None
        r_c = torch.empty_like(s_inv) if trains else None  # sum_k r * c, per (i, j)
        for start in range(0, b, block):
            stop = min(start + block, b)
            c_s = _anchor_cosines(s_gram, s_inv, start, stop, in_place=True)
            c_t = _anchor_cosines(t_gram, t_inv, start, stop, in_place=True)
            total += F.smooth_l1_loss(c_s, c_t, reduction="sum")
            if not trains:
                continue
            r = c_t.neg_().add_(c_s).clamp_(-1.0, 1.0)  # reuses c_t's memory
            r_c[start:stop] = torch.linalg.vecdot(r, c_s)
            inv_i = s_inv[start:stop]
            h = r.mul_(inv_i.unsqueeze(2)).mul_(inv_i.unsqueeze(1))
            d_gram += h.sum(0)
            h_rows = h.sum(2)
            rows = d_gram[start:stop]
            rows -= 2.0 * h_rows
            rows.diagonal(offset=start).add_(h_rows.sum(1))
        if trains:
            # inv is 0 exactly on the diagonal, where r * c is 0 too
            d_inv = 2.0 * r_c / s_inv.clamp(min=_EPS) * (s_inv > 0)
            ctx.save_for_backward(d_gram, d_inv)
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        d_gram, d_inv = ctx.saved_tensors
        return d_gram * grad_total, d_inv * grad_total, None, None, None


def distance_term(student: Relations, teacher: Relations) -> Tensor:
    with torch.no_grad():
        target = teacher.normalised_distances()
    return F.smooth_l1_loss(student.normalised_distances(), target)


def angle_term(student: Relations, teacher: Relations, block_elements: int | None = None) -> Tensor:
    """Smooth-L1 between the triplet cosines, the mean over all B^3 triplets (the reference's value)."""
    with torch.no_grad():
        t_inv = teacher.inverse_distances()
    s_inv = student.inverse_distances()
    b = len(s_inv)
    if block_elements is None:
        block_elements = ANGLE_BLOCK_ELEMENTS.get(s_inv.device.type, GPU_ANGLE_BLOCK_ELEMENTS)
    block = max(1, block_elements // (b * b))
    return _AngleTerm.apply(student.gram, s_inv, teacher.gram, t_inv, block) / b**3


def teacher_relations(teacher: Tensor) -> Relations:
    with torch.no_grad():
        return Relations.of(teacher.detach())


def rkd_distance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD's distance-wise term for student and teacher embeddings (B, D_s) and (B, D_t)."""
    return distance_term(Relations.of(student), teacher_relations(teacher))


def rkd_angle_loss(student: Tensor, teacher: Tensor, block_elements: int | None = None) -> Tensor:
    """RKD's angle-wise term for student and teacher embeddings (B, D_s) and (B, D_t)."""
    return angle_term(Relations.of(student), teacher_relations(teacher), block_elements)
