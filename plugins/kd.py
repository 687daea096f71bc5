"""Hinton KD: match the teacher's softened class probabilities.

Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network". NIPS Deep Learning
Workshop, 2015. https://arxiv.org/abs/1503.02531

Loss: ``ce_weight * CE(s, y) + kd_weight * T^2 * KL(softmax(t/T) || softmax(s/T))`` with the KL
reduced as ``batchmean`` (sum over classes, mean over the batch) and multiplied by ``T^2`` so the
soft-target gradients keep their scale as T changes. Defaults are the CIFAR-100 reference setting
of RepDistiller / mdistiller: T = 4, ce_weight = 0.1, kd_weight = 0.9.

``logit_standardization: true`` z-scores both models' logits before softening (Sun et al., "Logit
Standardization in Knowledge Distillation", CVPR 2024, arXiv:2403.01427): the student matches the
teacher's logit relations rather than their scale. The paper's CIFAR-100 setting with KD is
T = 2, ce_weight = 0.1, kd_weight = 9 (its repository's ``KD+logit_stand`` configs), given in
``configs/cifar100/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from kdzoo import MethodInfo, hookimpl, registering, soft_target_kl
from kdzoo.losses.kd import kd_loss, standardize


@dataclass
class KDConfig:
    temperature: float = 4.0
    ce_weight: float = 0.1
    kd_weight: float = 0.9
    logit_standardization: bool = False  # z-score logits before softening (Sun et al., CVPR 2024)

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative, positive

        positive(self, where, "temperature")
        non_negative(self, where, "ce_weight", "kd_weight")  # a negative weight maximises its term


class KDLoss(nn.Module):
    """The whole Hinton KD objective for your own training loop.

    >>> loss = KDLoss()(student_logits, teacher_logits, labels)  # doctest: +SKIP
    """

    def __init__(self, temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9):
        super().__init__()
        self.temperature, self.ce_weight, self.kd_weight = temperature, ce_weight, kd_weight

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor | None = None) -> Tensor:
        return kd_loss(student_logits, teacher_logits, targets, self.temperature, self.ce_weight, self.kd_weight)


class HintonKD:
    """Soft-target distillation on logits (no features, no extra modules, one stage)."""

    def __init__(self, config: KDConfig):
        self.config = config

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher):
        s, t = student.logits, teacher.logits
        if self.config.logit_standardization:
            s, t = standardize(s), standardize(t)
        return {"kd": soft_target_kl(s, t, self.config.temperature)}

    @hookimpl
    def kdzoo_loss_weights(self):
        return {"ce": self.config.ce_weight, "kd": self.config.kd_weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="kd",
        factory=HintonKD,
        config_class=KDConfig,
        paper="Hinton, Vinyals, Dean. Distilling the Knowledge in a Neural Network. 2015. arXiv:1503.02531",
        summary="match the teacher's temperature-softened class probabilities (KL, T^2, batchmean)",
        kind="logit",
        batch="local",  # a mean of per-sample terms: this process's share is enough
        terms=("kd",),
    )
)
