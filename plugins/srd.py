"""SRD: Miles, Mikolajczyk. "Understanding the Role of the Projector in Knowledge Distillation".
AAAI 2024. https://arxiv.org/abs/2303.11098

The student's pooled embedding goes through a linear projector to the teacher's width; both are
batch-normalised without affine parameters (eps 1e-4), and the student matches the teacher with
``log sum |z_s - z_t|^4`` (weight 2) beside a plain KD term (T = 1, weight 1) and CE (weight 1).
Defaults: the authors' public setting (their torchdistill config for ResNet-34 -> ResNet-18, which
torchdistill's ``SRDLoss`` reproduces; the repository has no CIFAR-100 config). Widths may differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from kdzoo import MethodInfo, Taps, hookimpl, registering, soft_target_kl
from kdzoo.losses.srd import srd_loss


@dataclass
class SRDConfig:
    weight: float = 2.0
    kd_weight: float = 1.0
    temperature: float = 1.0
    ce_weight: float = 1.0
    exponent: float = 4.0
    norm_eps: float = 1e-4

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative, positive

        non_negative(self, where, "weight", "kd_weight", "ce_weight")
        positive(self, where, "temperature", "exponent", "norm_eps")


class ProjectorDistillation:
    def __init__(self, config: SRDConfig):
        self.config = config

    @hookimpl
    def kdzoo_feature_taps(self):
        return Taps(teacher_embedding=True, student_embedding=True)

    @hookimpl
    def kdzoo_build_modules(self, teacher, student):
        d, eps = teacher.embedding_dim, self.config.norm_eps
        return {
            "projector": nn.Linear(student.embedding_dim, d),
            "student_norm": nn.BatchNorm1d(d, eps=eps, affine=False),
            "teacher_norm": nn.BatchNorm1d(d, eps=eps, affine=False),
        }

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, modules):
        c = self.config
        s = modules["student_norm"](modules["projector"](student.embedding))
        terms = {"srd": srd_loss(s, modules["teacher_norm"](teacher.embedding), c.exponent)}
        if c.kd_weight:  # a kd weight of 0: no kd term, and its computation skipped
            terms["kd"] = soft_target_kl(student.logits, teacher.logits, c.temperature)
        return terms

    @hookimpl
    def kdzoo_loss_weights(self):
        c = self.config
        return {"ce": c.ce_weight, "srd": c.weight, "kd": c.kd_weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="srd",
        factory=ProjectorDistillation,
        config_class=SRDConfig,
        paper="Miles, Mikolajczyk. Understanding the Role of the Projector in Knowledge Distillation. "
        "AAAI 2024. arXiv:2303.11098",
        summary="projected, batch-normalised embeddings matched by log sum |z_s - z_t|^4 (+ KD at T = 1)",
        kind="feature",
        terms=lambda config: ("srd", "kd") if config.kd_weight else ("srd",),
    )
)
