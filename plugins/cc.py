"""Correlation congruence: Peng, Jin, Liu, Li, Wu, Liu, Zhou, Zhang. "Correlation Congruence for
Knowledge Distillation". ICCV 2019. https://arxiv.org/abs/1904.01802

Both models' pooled embeddings go through a trainable linear embedding (128-d, as RepDistiller and
torchdistill's ``Linear4CCKD``) and are L2-normalised; the sample-to-sample correlation matrix is
the paper's Taylor-approximated Gaussian RBF kernel (gamma 0.4, order 2), and the loss
``||C_s - C_t||_F^2 / B^2`` (the paper's eq.; torchdistill's ``CCKDLoss`` does not square the
norm). Weight: 0.02, RepDistiller's CIFAR-100 setting for CC (``-a 0 -b 0.02``; RepDistiller's
own CC loss is a simpler correlation of embedding differences, so its published numbers are not
this formula's).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from kdzoo import MethodInfo, Taps, hookimpl, registering
from kdzoo.losses.cc import cc_loss


@dataclass
class CCConfig:
    weight: float = 0.02
    ce_weight: float = 1.0
    embedding_dim: int = 128
    gamma: float = 0.4
    order: int = 2

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import between, non_negative, positive

        non_negative(self, where, "weight", "ce_weight")
        positive(self, where, "embedding_dim", "gamma")
        between(self, where, 1, 20, "order")  # Taylor terms past 20 vanish in float32 (and p! overflows at 171)


class CorrelationCongruence:
    def __init__(self, config: CCConfig):
        self.config = config

    @hookimpl
    def kdzoo_feature_taps(self):
        return Taps(teacher_embedding=True, student_embedding=True)

    @hookimpl
    def kdzoo_build_modules(self, teacher, student):
        d = self.config.embedding_dim
        return {
            "student_embed": nn.Linear(student.embedding_dim, d),
            "teacher_embed": nn.Linear(teacher.embedding_dim, d),
        }

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, modules):
        c = self.config
        s, t = modules["student_embed"](student.embedding), modules["teacher_embed"](teacher.embedding)
        return {"cc": cc_loss(s, t, c.gamma, c.order)}

    @hookimpl
    def kdzoo_loss_weights(self):
        return {"ce": self.config.ce_weight, "cc": self.config.weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="cc",
        factory=CorrelationCongruence,
        config_class=CCConfig,
        paper="Peng et al. Correlation Congruence for Knowledge Distillation. ICCV 2019. arXiv:1904.01802",
        summary="match sample-to-sample correlation matrices (Gaussian RBF, Taylor order 2) of embedded features",
        kind="relation",
        terms=("cc",),
    )
)
