"""DeiT's distillation through a distillation token: Touvron, Cord, Douze, Massa, Sablayrolles,
Jégou. "Training data-efficient image transformers & distillation through attention". ICML 2021.
https://arxiv.org/abs/2012.12877

The student is a transformer with a distillation token (timm's ``*_distilled_*`` models) and two
heads: the class head learns the labels, the distillation head the teacher. ``variant: hard``
(the paper's best): ``1/2 CE(class head, y) + 1/2 CE(distillation head, argmax teacher)``;
``variant: soft``: ``(1 - lambda) CE(class head, y) + lambda tau^2 KL`` on the distillation head
with the paper's tau = 3, lambda = 0.1, the KL averaged over batch *and* classes as the authors'
``DistillationLoss`` does (``reduction='sum'`` / ``numel``). Evaluated, and exported, as DeiT and
timm evaluate: the average of the two heads. Any teacher (a CNN, as in the paper, or a ViT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F

from kdzoo import KdzooError, MethodInfo, Taps, hookimpl, registering, soft_target_kl


@dataclass
class DeiTConfig:
    variant: Literal["hard", "soft"] = "hard"
    hard_weight: float = 0.5  # the distillation head's share in the hard variant
    soft_weight: float = 0.1  # lambda of the soft variant
    temperature: float = 3.0  # tau of the soft variant

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import between, positive

        between(self, where, 0, 1, "hard_weight", "soft_weight")  # shares: the class head gets 1 - share
        positive(self, where, "temperature")


class DistillationToken:
    def __init__(self, config: DeiTConfig):
        self.config = config

    @hookimpl
    def kdzoo_feature_taps(self, student):
        if not student.distillation_head:
            raise KdzooError(
                f"deit trains a student's distillation token, and {student.name} has none: use one of timm's "
                "distilled transformers (e.g. deit_tiny_distilled_patch16_224), or kd for this student"
            )
        return Taps(student_distillation_head=True)

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher):
        head, t = student.distillation_logits, teacher.logits.detach()
        if self.config.variant == "hard":
            return {"deit": F.cross_entropy(head, t.argmax(dim=1))}
        # the authors' KL: sum / numel, i.e. the batchmean KL divided by the number of classes
        return {"deit": soft_target_kl(head, t, self.config.temperature) / head.shape[1]}

    @hookimpl
    def kdzoo_loss_weights(self):
        c = self.config
        share = c.hard_weight if c.variant == "hard" else c.soft_weight
        return {"ce": 1.0 - share, "deit": share}


kdzoo_register_methods = registering(
    MethodInfo(
        name="deit",
        factory=DistillationToken,
        config_class=DeiTConfig,
        paper="Touvron et al. Training data-efficient image transformers & distillation through attention. "
        "ICML 2021. arXiv:2012.12877",
        summary="a distilled transformer's distillation head learns the teacher's labels (hard) or "
        "softened outputs; the class head the labels",
        kind="logit",
        batch="local",  # a mean of per-sample terms: this process's share is enough
        terms=("deit",),
    )
)
