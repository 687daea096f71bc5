"""Curriculum temperature KD: Li, Li, Yang, Yang, Cheng, Yang. "Curriculum Temperature for Knowledge
Distillation". AAAI 2023. https://arxiv.org/abs/2211.16231

Hinton KD at a learnable global temperature ``T = t_start + t_range * sigmoid(theta)`` (theta
starts at 1, as the authors' ``Global_T``). The student minimises the KD loss; the temperature is
trained to *maximise* it, through a gradient reversal whose factor ``lambda`` follows a cosine
curriculum from 0 to -1 over the first 10 epochs (the authors' ``CosineDecay``, ``decay_max 0``,
``decay_min -1``, ``decay_loops 10``), so the task gets harder as the student improves.

kdzoo expresses the reversal with two terms instead of a custom backward: ``kd`` (the student's
term, at the current temperature held fixed) and ``ctkd_temperature`` (the same loss with the
student held fixed, minus its own value: it adds nothing to the loss, only the temperature's
gradient), and the curriculum lives where ramps belong, in ``kdzoo_loss_weights``: the
temperature term is weighted ``kd_weight * lambda(epoch)``. The gradients are exactly the
reversal layer's (``tests/methods/test_ctkd.py``). Defaults: the authors' CIFAR-100 setting with
vanilla KD (``-r 0.1 -a 0.9``, ``t_start 1``, ``t_end 20``). ``logit_standardization: true`` z-scores
the logits first (Sun et al., CVPR 2024, which applies it to CTKD).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdzoo import MethodInfo, hookimpl, registering
from kdzoo.losses.ctkd import cosine_ramp, kl_at
from kdzoo.losses.kd import standardize


@dataclass
class CTKDConfig:
    ce_weight: float = 0.1
    kd_weight: float = 0.9
    t_start: float = 1.0
    t_range: float = 20.0
    lambda_start: float = 0.0
    lambda_end: float = -1.0
    curriculum_epochs: int = 10
    logit_standardization: bool = False

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative, positive

        non_negative(self, where, "ce_weight", "kd_weight", "t_range", "curriculum_epochs")
        positive(self, where, "t_start")  # the lowest temperature the learned one can reach


class GlobalTemperature(nn.Module):
    """``t_start + t_range * sigmoid(theta)``, one learnable scalar."""

    def __init__(self, t_start: float, t_range: float):
        super().__init__()
        self.theta = nn.Parameter(torch.ones(1))
        self.t_start, self.t_range = t_start, t_range

    def forward(self) -> torch.Tensor:
        return self.t_start + self.t_range * torch.sigmoid(self.theta)


class CurriculumTemperatureKD:
    def __init__(self, config: CTKDConfig):
        self.config = config

    @hookimpl
    def kdzoo_build_modules(self):
        return {"temperature": GlobalTemperature(self.config.t_start, self.config.t_range)}

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, modules):
        s, t = student.logits, teacher.logits
        if self.config.logit_standardization:
            s, t = standardize(s), standardize(t)
        temperature = modules["temperature"]()
        adversary = kl_at(s.detach(), t, temperature)
        return {
            "kd": kl_at(s, t, temperature.detach()),
            "ctkd_temperature": adversary - adversary.detach(),  # zero in value: the temperature's gradient only
        }

    @hookimpl
    def kdzoo_loss_weights(self, epoch):
        c = self.config
        lam = cosine_ramp(epoch, c.curriculum_epochs, c.lambda_start, c.lambda_end)
        return {"ce": c.ce_weight, "kd": c.kd_weight, "ctkd_temperature": c.kd_weight * lam}


kdzoo_register_methods = registering(
    MethodInfo(
        name="ctkd",
        factory=CurriculumTemperatureKD,
        config_class=CTKDConfig,
        paper="Li et al. Curriculum Temperature for Knowledge Distillation. AAAI 2023. arXiv:2211.16231",
        summary="KD at a learnable temperature trained adversarially, its reversal ramped by a cosine curriculum",
        kind="logit",
        batch="local",  # a mean of per-sample terms: this process's share is enough
        terms=("kd", "ctkd_temperature"),
    )
)
