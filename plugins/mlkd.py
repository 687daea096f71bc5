"""MLKD: Jin, Wang, Lin. "Multi-Level Logit Distillation". CVPR 2023.
https://openaccess.thecvf.com/content/CVPR2023/html/Jin_Multi-Level_Logit_Distillation_CVPR_2023_paper.html

Predictions are aligned at three levels -- each sample's (KD), each pair of samples' (B x B Gram
matrix) and each pair of classes' (C x C Gram matrix) -- at five temperatures (4, 3, 5, 2, 6), on a
weakly augmented view (the batch as the data pipeline makes it: crop and flip) and a strongly
augmented one (``strong``: two RandAugment operations and a cutout, ``plugins/views.py``). Both
models run on both views; CE trains on both.

The terms follow the authors' code (``mdistiller/distillers/KD_ours.py``, registered as
``KD_ours``), which produced the paper's tables, including what it does differently from the paper:
its confidence masks multiply terms that are already batch means, so they scale the weak-view
instance and batch terms by the fraction of samples at or below the median teacher confidence, and
the class term by that of classes (about 1/2 each), rather than selecting samples; its strong-view
instance term uses the strong views at temperatures 4, 3 and 5 and the weak views at 2 and 6; the
strong view's batch and class terms are computed there but never added, so they are left out here.
Weights: CE 0.1 on each view, 0.9 on each distillation term (mdistiller's ``CFG.KD``: T = 4,
``CE_WEIGHT 0.1``, ``KD_WEIGHT 0.9``).

The learning rate is half the run's (``lr_scale``): the authors train every same-family CIFAR-100
pair at 0.025 (``configs/cifar100/ours/``), half the 0.05 that mdistiller's baselines and the
other methods use (their MobileNetV2 student: 0.0025, a quarter of the baselines' 0.01; ShuffleNet:
0.01, the baselines' rate): its instance terms alone give the logits 7.5 times the gradient of KD
at weight 0.9.

Differences from the authors' pipeline: the strong view is made from the weak one on the device
(the authors crop both views independently, and run RandAugment on PIL images with its colour
operations); the two views share one forward pass per model, so BatchNorm's batch statistics cover
both (the authors run the views through the models one after the other).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F

from kdzoo import INPUT_VIEW, MethodInfo, Stage, View, hookimpl, registering
from kdzoo.losses.mlkd import batch_level_loss, class_level_loss, confidence_fractions, instance_level_loss
from kdzoo.toolkit import rand_augment

STRONG = "strong"


@dataclass
class MLKDConfig:
    temperatures: list[float] = field(default_factory=lambda: [4.0, 3.0, 5.0, 2.0, 6.0])
    ce_weight: float = 0.1
    weight: float = 0.9
    augment_ops: int = 2
    lr_scale: float = 0.5

    def validate(self, where: str) -> None:
        from kdzoo import KdzooError
        from kdzoo.config.checks import non_negative, positive

        if not self.temperatures:
            raise KdzooError(f"config key '{where}.temperatures': name at least one temperature")
        positive(self, where, "temperatures", "lr_scale")
        non_negative(self, where, "ce_weight", "weight", "augment_ops")


class MultiLevelKD:
    def __init__(self, config: MLKDConfig):
        self.config = config

    @hookimpl
    def kdzoo_views(self):
        return [View(STRONG, self._strong)]

    def _strong(self, x):
        return rand_augment(x, self.config.augment_ops)

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, targets, views):
        temps = self.config.temperatures
        s_w, t_w = student.logits[views[INPUT_VIEW]], teacher.logits[views[INPUT_VIEW]]
        s_s, t_s = student.logits[views[STRONG]], teacher.logits[views[STRONG]]
        samples, classes = confidence_fractions(t_w)
        # the authors' strong-view sum: the strong views for its first three temperatures, the weak for the rest
        strong = sum(instance_level_loss(s_s, t_s, t) for t in temps[:3]) + sum(
            instance_level_loss(s_w, t_w, t) for t in temps[3:]
        )
        return {
            "mlkd_ce_strong": F.cross_entropy(s_s, targets),
            "mlkd_instance": samples * sum(instance_level_loss(s_w, t_w, t) for t in temps) + strong,
            "mlkd_batch": samples * sum(batch_level_loss(s_w, t_w, t) for t in temps),
            "mlkd_class": classes * sum(class_level_loss(s_w, t_w, t) for t in temps),
        }

    @hookimpl
    def kdzoo_schedule(self, epochs):
        return [Stage("train", epochs, lr_scale=self.config.lr_scale)]

    @hookimpl
    def kdzoo_loss_weights(self):
        c = self.config
        return {
            "ce": c.ce_weight,
            "mlkd_ce_strong": c.ce_weight,
            "mlkd_instance": c.weight,
            "mlkd_batch": c.weight,
            "mlkd_class": c.weight,
        }


kdzoo_register_methods = registering(
    MethodInfo(
        name="mlkd",
        factory=MultiLevelKD,
        config_class=MLKDConfig,
        paper="Jin, Wang, Lin. Multi-Level Logit Distillation. CVPR 2023",
        summary="align predictions per sample, per pair of samples and per pair of classes, at five "
        "temperatures, on weak and strong views",
        kind="logit",
        terms=("mlkd_ce_strong", "mlkd_instance", "mlkd_batch", "mlkd_class"),
    )
)
