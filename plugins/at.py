"""Attention transfer: match where the teacher's feature maps are active.

Zagoruyko, Komodakis. "Paying More Attention to Attention: Improving the Performance of
Convolutional Neural Networks via Attention Transfer". ICLR 2017. https://arxiv.org/abs/1612.03928

Spatial attention of a feature map f (B, C, H, W): ``Q = mean_c(f^p)`` (p = 2), flattened per
sample and L2-normalised: ``a = Q / ||Q||_2``. Two forms, ``form`` in the config:

* ``code`` (default; the authors' code and RepDistiller, which reproduce the CIFAR tables):
  per stage pair ``mean((a_s - a_t)^2)`` over batch and positions; summed over pairs; beta = 1000.
* ``paper``: per stage pair ``mean_b ||a_s - a_t||_2`` (the non-squared L2 norm of the difference,
  averaged over the batch), summed over pairs and scaled by beta/2. (With normalised maps, the
  paper's sum over channels and the code's mean over channels give the same ``a``.)

Pairs: every student stage but the stem and the last, each with the teacher stage of closest
relative depth (then stride); when spatial sizes differ, the larger map is average-pooled to the
smaller before normalising. ``student_stages`` / ``teacher_stages`` override the pairing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from kdzoo import MethodInfo, Taps, hookimpl
from kdzoo.features import inner_stages, pair_stages


@dataclass
class ATConfig:
    beta: float = 1000.0
    p: float = 2.0
    form: Literal["code", "paper"] = "code"
    student_stages: list[int] | None = None
    teacher_stages: list[int] | None = None


def attention_map(feature: Tensor, p: float = 2.0, size: tuple[int, int] | None = None) -> Tensor:
    """``normalize(flatten(mean_c(f^p)))`` per sample; pooled to ``size`` first if given."""
    q = feature.pow(p).mean(dim=1, keepdim=True) if p != 2 else feature.square().mean(dim=1, keepdim=True)
    if size is not None and tuple(q.shape[-2:]) != tuple(size):
        q = F.adaptive_avg_pool2d(q, size)
    return F.normalize(q.flatten(1), dim=1)


def at_loss(student_feature: Tensor, teacher_feature: Tensor, p: float = 2.0, form: str = "code") -> Tensor:
    """Attention-transfer loss of one stage pair (unweighted)."""
    size = (
        min(student_feature.shape[-2], teacher_feature.shape[-2]),
        min(student_feature.shape[-1], teacher_feature.shape[-1]),
    )
    a_s = attention_map(student_feature, p, size)
    a_t = attention_map(teacher_feature.detach(), p, size)
    if form == "paper":
        return 0.5 * (a_s - a_t).norm(p=2, dim=1).mean()
    return (a_s - a_t).pow(2).mean()


class AttentionTransfer:
    def __init__(self, config: ATConfig):
        self.config = config
        self.pairs: list[tuple[int, int]] = []

    @hookimpl
    def kdzoo_feature_taps(self, teacher, student):
        wanted = self.config.student_stages if self.config.student_stages is not None else inner_stages(student)
        self.pairs = pair_stages(teacher, student, wanted, self.config.teacher_stages)
        return Taps(student=tuple(s for s, _ in self.pairs), teacher=tuple(t for _, t in self.pairs))

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher):
        total = sum(
            at_loss(student.feature(s), teacher.feature(t), self.config.p, self.config.form) for s, t in self.pairs
        )
        return {"at": total}

    @hookimpl
    def kdzoo_loss_weights(self):
        return {"ce": 1.0, "at": self.config.beta}


@hookimpl
def kdzoo_register_methods(register):
    register(
        MethodInfo(
            name="at",
            factory=AttentionTransfer,
            config_class=ATConfig,
            paper="Zagoruyko & Komodakis. Paying More Attention to Attention. ICLR 2017. arXiv:1612.03928",
            summary="match normalised spatial attention maps (mean_c f^2) at paired stages; CE + 1000 * AT",
        )
    )
