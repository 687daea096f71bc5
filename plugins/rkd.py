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
B x B x B scalars, never the B x B x D difference tensor of the reference code. Those scalars are
made a block of anchors at a time, and the term's gradient is reduced to B x B matrices in the
same pass (``_AngleTerm``), so nothing B^3 is kept for the backward pass and nothing is recomputed
(at B = 256: 0.5 MB kept instead of the 260 MB autograd would keep). Under data parallelism
each process uses its local batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdzoo import MethodInfo, Taps, hookimpl, registering
from kdzoo.losses.rkd import Relations, angle_term, distance_term, teacher_relations


@dataclass
class RKDConfig:
    distance_weight: float = 25.0
    angle_weight: float = 50.0
    ce_weight: float = 1.0

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative

        non_negative(self, where, "distance_weight", "angle_weight", "ce_weight")


class RelationalKD:
    def __init__(self, config: RKDConfig):
        self.config = config

    @hookimpl
    def kdzoo_feature_taps(self):
        return Taps(teacher_embedding=True, student_embedding=True)

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher):
        # one Gram matrix and one distance matrix per model serve both terms; the distances come from
        # G_ii + G_jj - 2 G_ij, which cancels badly in half precision: like every method's terms unless it
        # opts into autocast (MethodInfo.autocast), they are computed in float32 even under mixed precision
        s, t = Relations.of(student.embedding), teacher_relations(teacher.embedding)
        return {"rkd_distance": distance_term(s, t), "rkd_angle": angle_term(s, t)}

    @hookimpl
    def kdzoo_loss_weights(self):
        c = self.config
        return {"ce": c.ce_weight, "rkd_distance": c.distance_weight, "rkd_angle": c.angle_weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="rkd",
        factory=RelationalKD,
        config_class=RKDConfig,
        paper="Park, Kim, Lu, Cho. Relational Knowledge Distillation. CVPR 2019. arXiv:1904.05068",
        summary="match pairwise distances (x25) and triplet angles (x50) of pooled embeddings; widths may differ",
        kind="relation",
        terms=("rkd_distance", "rkd_angle"),
    )
)
