"""Streamlined KD: Jeong, Lee, Choi. "Streamlined Knowledge Distillation". CVPR 2026.
https://github.com/HyunJunSik/StreamLined

Two logit terms: instance-wise (the soft-target KL) and direction-wise (the Mahalanobis distance
between the student's and the teacher's B x B Gram matrices of L2-normalised logits, under their
difference's covariance plus ``tikhonov * I``). ``form: code`` (default) is the authors' code, with
which their CIFAR-100 table was made: ``T^2`` on the KL, Gram matrices divided by the number of
classes, and each term scaled by the fraction of samples (instance) or classes (direction) whose
teacher confidence is at most the batch median; ``form: paper`` is the equations without those.
Defaults: the authors' ``SKD`` class (T = 4, tikhonov 0.1, CE 0.1, both terms 0.9); their note
gives CE 0.5 / terms 0.5 for ResNet32x4 -> ResNet8x4 (``configs/cifar100/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kdzoo import MethodInfo, hookimpl, registering
from kdzoo.losses.skd import skd_direction_loss, skd_instance_loss


@dataclass
class SKDConfig:
    temperature: float = 4.0
    tikhonov: float = 0.1
    ce_weight: float = 0.1
    kd_weight: float = 0.9  # the authors weight both terms by it
    form: Literal["code", "paper"] = "code"

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative, positive

        # tikhonov keeps the covariance invertible: with fewer samples than classes it is singular without it
        positive(self, where, "temperature", "tikhonov")
        non_negative(self, where, "ce_weight", "kd_weight")


class StreamlinedKD:
    def __init__(self, config: SKDConfig):
        self.config = config

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher):
        c, s, t = self.config, student.logits, teacher.logits
        return {
            "skd_instance": skd_instance_loss(s, t, c.temperature, c.form),
            "skd_direction": skd_direction_loss(s, t, c.tikhonov, c.form),
        }

    @hookimpl
    def kdzoo_loss_weights(self):
        c = self.config
        return {"ce": c.ce_weight, "skd_instance": c.kd_weight, "skd_direction": c.kd_weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="skd",
        factory=StreamlinedKD,
        config_class=SKDConfig,
        paper="Jeong, Lee, Choi. Streamlined Knowledge Distillation. CVPR 2026",
        summary="soft-target KL plus a Mahalanobis distance between the logits' batch Gram matrices",
        kind="logit",
        terms=("skd_instance", "skd_direction"),
    )
)
