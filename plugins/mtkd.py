"""Multi-teacher KD: each teacher's soft targets, weighted per sample by how much to trust it.

Zhang, Chen, Wang. "Confidence-Aware Multi-Teacher Knowledge Distillation". ICASSP 2022,
arXiv:2201.00007 (the authors' code: Rorozhl/CA-MKD). ``weighting: confidence`` is CA-MKD's
confidence-aware soft-target term (a teacher weighs more on a sample the more it is confident of the
sample's label); ``entropy`` is EBKD (Kwon et al., ICASSP 2020), ``average`` every teacher alike,
the two baselines that code trains with the same term (``kdzoo.losses.mtkd``). CA-MKD's second,
intermediate-feature term (a student feature regressed on each teacher's, weighted by the teacher's
classifier on it) is not included: it reads the teachers' feature maps, and several teachers teach
kdzoo's student through their logits.

Needs ``teachers:`` (two or more: ``MethodInfo.min_teachers``; a run with one refuses it in one
line). Defaults: the authors' CIFAR-100 run (``scripts/run.sh``, ``train_student.py``): T = 4,
``-r 1 -a 1`` (CE 1, this term 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from kdzoo import MethodInfo, hookimpl, registering
from kdzoo.losses.mtkd import Weighting, multi_teacher_kl


@dataclass
class MTKDConfig:
    weighting: Weighting = "confidence"  # confidence: CA-MKD; entropy: EBKD; average: every teacher alike
    temperature: float = 4.0
    ce_weight: float = 1.0
    kd_weight: float = 1.0

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative, positive

        positive(self, where, "temperature")
        non_negative(self, where, "ce_weight", "kd_weight")


class MultiTeacherKD:
    def __init__(self, config: MTKDConfig):
        self.config = config

    @hookimpl
    def kdzoo_compute_losses(self, student, teachers, targets):
        logits = [t.logits for t in teachers]  # two or more: MethodInfo.min_teachers
        return {
            "mtkd": multi_teacher_kl(student.logits, logits, targets, self.config.temperature, self.config.weighting)
        }

    @hookimpl
    def kdzoo_loss_weights(self):
        return {"ce": self.config.ce_weight, "mtkd": self.config.kd_weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="mtkd",
        factory=MultiTeacherKD,
        config_class=MTKDConfig,
        paper="Zhang, Chen, Wang. Confidence-Aware Multi-Teacher Knowledge Distillation. ICASSP 2022. arXiv:2201.00007",
        summary="several teachers' soft targets, each weighted per sample by its confidence in the label "
        "(CA-MKD), its entropy (EBKD) or alike",
        kind="logit",
        batch="local",
        terms=("mtkd",),
        min_teachers=2,
    )
)
