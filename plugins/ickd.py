"""Inter-channel correlation KD: Liu, Huang, Lin, Xie, Wang, Chang, Liang. "Exploring Inter-Channel
Correlation for Diversity-preserved Knowledge Distillation". ICCV 2021.
https://openaccess.thecvf.com/content/ICCV2021/html/Liu_Exploring_Inter-Channel_Correlation_for_Diversity-Preserved_Knowledge_Distillation_ICCV_2021_paper.html

The student's last feature map goes through an embedding (1x1 conv + BN) to the teacher's width;
per sample, the channels' correlation matrix (C x C Gram over positions, rows L2-normalised) of
the student must match the teacher's: ``sum ||G_s - G_t||^2 / (C B)``. Map sizes may differ.
Defaults: the authors' CIFAR-100 code and README (``ICKD-C``): CE + KD (T = 4, weight 1) + 2.5 ICKD
on the last stage (``feat[-2]``); ``kd_weight: 0`` is their "w/o KL" row. torchdistill's
``ChSimLoss`` (the authors' ImageNet code) divides by ``C B^2`` and embeds with a 3x3 conv.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdzoo import MethodInfo, Taps, hookimpl, registering, soft_target_kl
from kdzoo.losses.ickd import ickd_loss
from kdzoo.toolkit import ConvRegressor


@dataclass
class ICKDConfig:
    weight: float = 2.5
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    temperature: float = 4.0
    student_stage: int = -1
    teacher_stage: int = -1

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative, positive

        non_negative(self, where, "weight", "ce_weight", "kd_weight")
        positive(self, where, "temperature")


class InterChannelCorrelation:
    def __init__(self, config: ICKDConfig):
        self.config = config

    @hookimpl
    def kdzoo_plan(self, teacher, student):
        """The (student, teacher) stages whose channel correlations are matched."""
        return student.stage(self.config.student_stage), teacher.stage(self.config.teacher_stage)

    @hookimpl
    def kdzoo_feature_taps(self, plan):
        s, t = plan
        return Taps(student=(s.index,), teacher=(t.index,))

    @hookimpl
    def kdzoo_build_modules(self, plan):
        s, t = plan
        # the authors' Embed: a 1x1 conv without bias and BN, no activation, the map's size kept
        return {"embed": ConvRegressor(s.channels, t.channels, stride_ratio=1.0, relu=False)}

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, plan, modules):
        s, t = plan
        feature = student.feature(s.index)
        terms = {"ickd": ickd_loss(modules["embed"](feature, tuple(feature.shape[-2:])), teacher.feature(t.index))}
        if self.config.kd_weight:  # kd_weight 0: the authors' "w/o KL" row, no KD term at all
            terms["kd"] = soft_target_kl(student.logits, teacher.logits, self.config.temperature)
        return terms

    @hookimpl
    def kdzoo_loss_weights(self):
        c = self.config
        weights = {"ce": c.ce_weight, "ickd": c.weight}
        return {**weights, "kd": c.kd_weight} if c.kd_weight else weights


kdzoo_register_methods = registering(
    MethodInfo(
        name="ickd",
        factory=InterChannelCorrelation,
        config_class=ICKDConfig,
        paper="Liu et al. Exploring Inter-Channel Correlation for Diversity-preserved Knowledge "
        "Distillation. ICCV 2021",
        summary="match each sample's channel-to-channel correlations of the last feature map (+ KD)",
        kind="feature",
        batch="local",  # a mean of per-sample terms: this process's share is enough
        terms=lambda config: ("ickd", "kd") if config.kd_weight else ("ickd",),  # kd_weight 0: no KD term
    )
)
