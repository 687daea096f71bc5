"""DIST and DIST+: match the correlations of the teacher's predictions, not their values.

**DIST** — Huang, You, Wang, Qian, Xu. "Knowledge Distillation from A Stronger Teacher". NeurIPS
2022. https://arxiv.org/abs/2205.10536. With ``p = softmax(z / tau)``: the inter-class relation
``tau^2 (1 - mean_i pearson(p_s[i], p_t[i]))`` (each sample's ranking of the classes) and the
intra-class relation ``tau^2 (1 - mean_c pearson(p_s[:, c], p_t[:, c]))`` (each class across the
batch), weighted beta and gamma, plus CE. Defaults: the paper's CIFAR-100 setting, tau = 4,
beta = gamma = 2 (ImageNet: tau = 1, beta = gamma = 1).

**DIST+** — Huang et al. "DIST+: Knowledge Distillation From a Stronger Adaptive Teacher". TPAMI
2025. DIST plus two relations on the last feature maps: along channels at every position
(``dist_channel``) and across the batch for every position of the channel-summed maps
(``dist_spatial``), each ``1 - mean correlation``. Feature maps of different widths or sizes are
made comparable by a trainable 1x1 conv + BN on the student side and average pooling to the
smaller map (kdzoo's choice; the relations are defined on equal shapes). torchdistill's
``DISTPlusLoss`` adds the raw channel correlation (``+ iota * corr``), which rewards
*anti*-correlation; kdzoo uses ``1 - corr``, like every other DIST relation
(docs/differences-from-torchdistill.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from kdzoo import MethodInfo, Taps, hookimpl, registering
from kdzoo.losses.dist import channel_relation_loss, dist_losses, spatial_relation_loss
from kdzoo.toolkit.shapes import pooled_to_smaller


@dataclass
class DISTConfig:
    tau: float = 4.0
    beta: float = 2.0  # inter-class relation
    gamma: float = 2.0  # intra-class relation
    ce_weight: float = 1.0

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative, positive

        positive(self, where, "tau")
        non_negative(self, where, "beta", "gamma", "ce_weight")


@dataclass
class DISTPlusConfig(DISTConfig):
    channel_weight: float = 1.0
    spatial_weight: float = 1.0
    student_stage: int = -1  # the feature maps whose relations are matched: the last stages by default
    teacher_stage: int = -1

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative

        super().validate(where)
        non_negative(self, where, "channel_weight", "spatial_weight")


class DIST:
    def __init__(self, config: DISTConfig):
        self.config = config

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher):
        inter, intra = dist_losses(student.logits, teacher.logits, self.config.tau)
        return {"dist_inter": inter, "dist_intra": intra}

    @hookimpl
    def kdzoo_loss_weights(self):
        c = self.config
        return {"ce": c.ce_weight, "dist_inter": c.beta, "dist_intra": c.gamma}


class Projector(nn.Module):
    """Student map (B, Cs, H, W) -> (B, Ct, H, W): 1x1 conv + BN."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(student_channels, teacher_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(teacher_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class DISTPlus(DIST):
    @hookimpl
    def kdzoo_plan(self, teacher, student):
        """The (student, teacher) stages whose maps are related."""
        return student.stage(self.config.student_stage), teacher.stage(self.config.teacher_stage)

    @hookimpl
    def kdzoo_feature_taps(self, plan):
        s, t = plan
        return Taps(student=(s.index,), teacher=(t.index,))

    @hookimpl
    def kdzoo_build_modules(self, plan):
        s, t = plan
        return {"projector": Projector(s.channels, t.channels)}

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, plan, modules):
        s, t = plan
        terms = super().kdzoo_compute_losses(student, teacher)
        mapped, target = pooled_to_smaller(modules["projector"](student.feature(s.index)), teacher.feature(t.index))
        terms["dist_channel"] = channel_relation_loss(mapped, target)
        terms["dist_spatial"] = spatial_relation_loss(mapped, target)
        return terms

    @hookimpl
    def kdzoo_loss_weights(self):
        c = self.config
        weights = super().kdzoo_loss_weights()
        return {**weights, "dist_channel": c.channel_weight, "dist_spatial": c.spatial_weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="dist",
        factory=DIST,
        config_class=DISTConfig,
        paper="Huang, You, Wang, Qian, Xu. Knowledge Distillation from A Stronger Teacher. NeurIPS 2022. "
        "arXiv:2205.10536",
        summary="match inter- and intra-class Pearson correlations of softened predictions (tau 4, 2 + 2)",
        kind="logit",
        terms=("dist_inter", "dist_intra"),
    ),
    MethodInfo(
        name="dist_plus",
        factory=DISTPlus,
        config_class=DISTPlusConfig,
        paper="Huang, You, Wang, Qian, Xu. DIST+: Knowledge Distillation From a Stronger Adaptive Teacher. TPAMI 2025",
        summary="DIST plus channel and spatial correlations of the last feature maps",
        kind="relation",
        terms=("dist_inter", "dist_intra", "dist_channel", "dist_spatial"),
    ),
)
