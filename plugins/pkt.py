"""Probabilistic knowledge transfer: Passalis, Tefas. "Learning Deep Representations with
Probabilistic Knowledge Transfer". ECCV 2018. https://arxiv.org/abs/1803.10837

The pooled embeddings of a batch become a distribution over sample pairs (cosine similarity
mapped to [0, 1], normalised per row); the student matches the teacher's with a KL divergence.
Widths may differ. Defaults: RepDistiller's CIFAR-100 setting, CE + 30000 PKT on the last
embedding (``-a 0 -b 30000``).
"""

from __future__ import annotations

from dataclasses import dataclass

from kdzoo import MethodInfo, Taps, hookimpl, registering
from kdzoo.losses.pkt import pkt_loss


@dataclass
class PKTConfig:
    weight: float = 30000.0
    ce_weight: float = 1.0

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative

        non_negative(self, where, "weight", "ce_weight")


class PKT:
    def __init__(self, config: PKTConfig):
        self.config = config

    @hookimpl
    def kdzoo_feature_taps(self):
        return Taps(teacher_embedding=True, student_embedding=True)

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher):
        return {"pkt": pkt_loss(student.embedding, teacher.embedding)}

    @hookimpl
    def kdzoo_loss_weights(self):
        return {"ce": self.config.ce_weight, "pkt": self.config.weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="pkt",
        factory=PKT,
        config_class=PKTConfig,
        paper="Passalis, Tefas. Learning Deep Representations with Probabilistic Knowledge Transfer. "
        "ECCV 2018. arXiv:1803.10837",
        summary="match the distribution of cosine similarities between the samples' embeddings (KL)",
        kind="relation",
        terms=("pkt",),
    )
)
