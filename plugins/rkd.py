"""Relational KD: match the structure of the batch (distances and angles), not the outputs.

Park, Kim, Lu, Cho. "Relational Knowledge Distillation". CVPR 2019. https://arxiv.org/abs/1904.05068

On pooled embeddings (pre-logits) e of teacher and student, which may have different widths (no
projection needed: only relations between samples are compared):

* distance-wise: pairwise Euclidean distances, each matrix divided by the mean of its positive
  (off-diagonal) entries; smooth-L1 between student and teacher; weight 25.
* angle-wise: for every triplet, the cosine of the angle at anchor i between e_j - e_i and
  e_k - e_i (unit-normalised differences); smooth-L1; weight 50.

Teacher terms carry no gradient. The angle term is computed from Gram matrices,
``<e_j - e_i, e_k - e_i> = G_jk - G_ij - G_ik + G_ii`` divided by the two distances, so it needs
B x B x B scalars, never the B x B x D difference tensor of the reference code. Under data
parallelism each process uses its local batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo import MethodInfo, Taps, hookimpl

_EPS = 1e-12


def pairwise_distances(e: Tensor) -> Tensor:
    """Euclidean distances (B, B) with an exact zero diagonal."""
    sq = e.pow(2).sum(dim=1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * e @ e.t()).clamp(min=_EPS)
    d = d2.sqrt()
    return d * (1.0 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def normalised_distances(e: Tensor) -> Tensor:
    d = pairwise_distances(e)
    return d / d[d > 0].mean()


def triplet_cosines(e: Tensor) -> Tensor:
    """cos of the angle at i between e_j - e_i and e_k - e_i, shape (B, B, B); 0 where j or k == i."""
    gram = e @ e.t()
    d = pairwise_distances(e)
    inv = torch.where(d > 0, 1.0 / d.clamp(min=_EPS), torch.zeros_like(d))
    diag = gram.diagonal()
    # dot[i, j, k] = G_jk - G_ij - G_ik + G_ii
    dot = gram.unsqueeze(0) - gram.unsqueeze(2) - gram.unsqueeze(1) + diag.view(-1, 1, 1)
    return dot * inv.unsqueeze(2) * inv.unsqueeze(1)


def rkd_distance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    with torch.no_grad():
        target = normalised_distances(teacher.detach())
    return F.smooth_l1_loss(normalised_distances(student), target)


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    with torch.no_grad():
        target = triplet_cosines(teacher.detach())
    return F.smooth_l1_loss(triplet_cosines(student), target)


@dataclass
class RKDConfig:
    distance_weight: float = 25.0
    angle_weight: float = 50.0
    ce_weight: float = 1.0


class RelationalKD:
    def __init__(self, config: RKDConfig):
        self.config = config

    @hookimpl
    def kdzoo_feature_taps(self):
        return Taps(teacher_embedding=True, student_embedding=True)

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, stage):
        s, t = student.embedding.float(), teacher.embedding.float()
        terms = {}
        if stage.term_on("rkd_distance"):
            terms["rkd_distance"] = rkd_distance_loss(s, t)
        if stage.term_on("rkd_angle"):
            terms["rkd_angle"] = rkd_angle_loss(s, t)
        return terms

    @hookimpl
    def kdzoo_loss_weights(self):
        c = self.config
        return {"ce": c.ce_weight, "rkd_distance": c.distance_weight, "rkd_angle": c.angle_weight}


@hookimpl
def kdzoo_register_methods(register):
    register(
        MethodInfo(
            name="rkd",
            factory=RelationalKD,
            config_class=RKDConfig,
            paper="Park, Kim, Lu, Cho. Relational Knowledge Distillation. CVPR 2019. arXiv:1904.05068",
            summary="match pairwise distances (x25) and triplet angles (x50) of pooled embeddings; widths may differ",
        )
    )
