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
smaller before normalising. ``student_stages`` / ``teacher_stages`` override the pairing. Of the
teacher's maps only their attention is kept through the step and in a teacher-output cache (a
:class:`~kdzoo.Summary`), C times smaller than the maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

from kdzoo import MethodInfo, Summary, Taps, hookimpl, pair_inner_stages, registering
from kdzoo.losses.at import attention_loss, spatial_attention


@dataclass
class ATConfig:
    beta: float = 1000.0
    p: float = 2.0
    form: Literal["code", "paper"] = "code"
    student_stages: list[int] | None = None
    teacher_stages: list[int] | None = None

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative, positive

        non_negative(self, where, "beta")
        positive(self, where, "p")  # the power of the attention map


class AttentionTransfer:
    def __init__(self, config: ATConfig):
        self.config = config

    @property
    def summary_name(self) -> str:
        return f"at.attention_p{self.config.p:g}"

    @hookimpl
    def kdzoo_plan(self, teacher, student):
        """The (student, teacher) stage pairs."""
        return pair_inner_stages(teacher, student, self.config.student_stages, self.config.teacher_stages)

    @hookimpl
    def kdzoo_feature_taps(self, plan):
        # of each teacher map, only its attention is kept (and cached), not the map itself
        summaries = tuple(
            Summary(self.summary_name, t, partial(spatial_attention, p=self.config.p))
            for t in sorted({t for _, t in plan})
        )
        return Taps(student=tuple(s for s, _ in plan), teacher_summaries=summaries)

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, plan):
        c = self.config
        total = sum(
            attention_loss(spatial_attention(student.feature(s), c.p), teacher.summary(self.summary_name, t), c.form)
            for s, t in plan
        )
        return {"at": total}

    @hookimpl
    def kdzoo_loss_weights(self):
        return {"ce": 1.0, "at": self.config.beta}


kdzoo_register_methods = registering(
    MethodInfo(
        name="at",
        factory=AttentionTransfer,
        config_class=ATConfig,
        paper="Zagoruyko & Komodakis. Paying More Attention to Attention. ICLR 2017. arXiv:1612.03928",
        summary="match normalised spatial attention maps (mean_c f^2) at paired stages; CE + 1000 * AT",
        kind="feature",
        batch="local",  # a mean of per-sample terms: this process's share is enough
        terms=("at",),
    )
)
