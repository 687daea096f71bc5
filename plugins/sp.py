"""Similarity-preserving KD: Tung, Mori. "Similarity-Preserving Knowledge Distillation". ICCV 2019.
https://arxiv.org/abs/1907.09682

Samples that the teacher's last feature map finds similar should be similar for the student:
``||G_s - G_t||_F^2 / B^2`` with ``G = f f^T`` over the flattened maps, rows L2-normalised (the
paper's eq. 2 and RepDistiller; torchdistill uses the L1 norm there, see
docs/differences-from-torchdistill.md). ``G`` is B x B, so any widths and sizes pair. Defaults:
RepDistiller's CIFAR-100 setting, CE + 3000 SP on the last stage (``feat[-2]``).
"""

from __future__ import annotations

from dataclasses import dataclass

from kdzoo import MethodInfo, Taps, hookimpl, registering
from kdzoo.losses.sp import sp_loss


@dataclass
class SPConfig:
    weight: float = 3000.0
    ce_weight: float = 1.0
    student_stage: int = -1
    teacher_stage: int = -1

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative

        non_negative(self, where, "weight", "ce_weight")


class SimilarityPreserving:
    def __init__(self, config: SPConfig):
        self.config = config

    @hookimpl
    def kdzoo_plan(self, teacher, student):
        """The (student, teacher) stages whose maps are compared."""
        return student.resolve(self.config.student_stage), teacher.resolve(self.config.teacher_stage)

    @hookimpl
    def kdzoo_feature_taps(self, plan):
        s, t = plan
        return Taps(student=(s,), teacher=(t,))

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, plan):
        s, t = plan
        return {"sp": sp_loss(student.feature(s), teacher.feature(t))}

    @hookimpl
    def kdzoo_loss_weights(self):
        return {"ce": self.config.ce_weight, "sp": self.config.weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="sp",
        factory=SimilarityPreserving,
        config_class=SPConfig,
        paper="Tung, Mori. Similarity-Preserving Knowledge Distillation. ICCV 2019. arXiv:1907.09682",
        summary="match the batch's pairwise similarities of the last feature maps (B x B Gram, rows L2-normalised)",
        kind="relation",
        terms=("sp",),
    )
)
