"""Teacher-free KD: Yuan, Tay, Li, Wang, Feng. "Revisiting Knowledge Distillation via Label
Smoothing Regularization". CVPR 2020. https://arxiv.org/abs/1909.11723

Two forms (``variant``):

* ``self`` (Tf-KD_self): Hinton KD from a trained copy of the student itself, so ``teacher.model``
  must be the student's architecture (kdzoo trains and caches it first). Authors' CIFAR-100 setting
  for ResNet-18: T = 6, alpha = 0.95, multiplier 50.
* ``virtual`` (Tf-KD_reg): no teacher at all; a virtual teacher puts ``correct_prob = 0.99`` on the
  label and spreads the rest evenly, softened as ``softmax(u / T)`` with T = 20, against the
  student's *unsoftened* distribution, as the authors' code does. Authors' setting: alpha = 0.1,
  multiplier 100.

Each is the authors' objective as their code computes it (``my_loss_function.py``), for any
number of classes C: ``(1 - alpha) CE + alpha * multiplier * KL``, the KL reduced by
``nn.KLDivLoss()``'s default ``'mean'``, which averages over the batch *and* the classes (so the
term is the ``batchmean`` KL / C). The configuration takes the authors' ``alpha`` and
``multiplier``; the term's weight is their product. Converting to a ``batchmean`` weight once, for
CIFAR-100's C = 100, would put a 10-class run's term at a tenth of the authors' strength.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kdzoo import KdzooError, MethodInfo, hookimpl, soft_target_kl
from kdzoo.losses.tfkd import virtual_teacher_loss


@dataclass
class TfKDConfig:
    variant: Literal["self", "virtual"] = "virtual"
    # self: Hinton KD from a trained copy of the student
    temperature: float = 6.0
    alpha: float = 0.95
    multiplier: float = 50.0
    # virtual: the manually designed teacher
    virtual_temperature: float = 20.0
    virtual_alpha: float = 0.1
    virtual_multiplier: float = 100.0
    correct_prob: float = 0.99

    def validate(self, where: str) -> None:
        if not 0.0 < self.correct_prob < 1.0:
            raise KdzooError(f"config key '{where}.correct_prob': must be in (0, 1), got {self.correct_prob}")
        for key in ("alpha", "virtual_alpha"):
            alpha = getattr(self, key)
            if not 0.0 <= alpha <= 1.0:
                raise KdzooError(f"config key '{where}.{key}': must be in [0, 1] (CE gets 1 - it), got {alpha}")


class TeacherFreeKD:
    def __init__(self, config: TfKDConfig):
        self.config = config
        self.virtual = config.variant == "virtual"

    @hookimpl
    def kdzoo_feature_taps(self, teacher, student):
        if not self.virtual and teacher is not None and teacher.name != student.name:
            raise KdzooError(
                f"tfkd variant 'self' learns from a trained copy of the student: set teacher.model={student.name} "
                f"(got teacher {teacher.name}), or use kd for another teacher"
            )

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, targets):
        c, logits = self.config, student.logits.float()
        if self.virtual:
            kl = virtual_teacher_loss(logits, targets, c.virtual_temperature, c.correct_prob)
        else:
            kl = soft_target_kl(logits, teacher.logits.float(), c.temperature)
        # the authors' nn.KLDivLoss() averages over the classes too; their multiplier is tuned for that
        return {"tfkd": kl / logits.shape[1]}

    @hookimpl
    def kdzoo_loss_weights(self):
        c = self.config
        alpha, multiplier = (c.virtual_alpha, c.virtual_multiplier) if self.virtual else (c.alpha, c.multiplier)
        return {"ce": 1.0 - alpha, "tfkd": alpha * multiplier}


@hookimpl
def kdzoo_register_methods(register):
    register(
        MethodInfo(
            name="tfkd",
            factory=TeacherFreeKD,
            config_class=TfKDConfig,
            paper="Yuan, Tay, Li, Wang, Feng. Revisiting Knowledge Distillation via Label Smoothing "
            "Regularization (Teacher-free KD). CVPR 2020. arXiv:1909.11723",
            summary="teacher-free KD: a virtual teacher (0.99 on the label), or a trained copy of the student",
            needs_teacher=lambda config: config.variant == "self",
            kind="self",
        )
    )
