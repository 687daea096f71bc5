"""Variational information distillation: Ahn, Hu, Damianou, Lawrence, Dai. "Variational Information
Distillation for Knowledge Transfer". CVPR 2019. https://arxiv.org/abs/1904.05835

At every inner stage pair (paired like attention transfer) a regressor of three 1x1 convs (ReLU
between) maps the student's map to the mean of a Gaussian over the teacher's, with a learned
per-channel variance ``softplus(alpha) + eps`` (initialised to 5); the student maximises the teacher
map's likelihood. The larger map is average-pooled to the smaller. Defaults: RepDistiller's
CIFAR-100 setting, CE + 1 VID on ``feat[1:-1]``, middle width = the teacher's channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo import MethodInfo, Taps, hookimpl, pair_inner_stages, registering
from kdzoo.losses.vid import vid_loss
from kdzoo.toolkit.shapes import pooled_to_smaller


@dataclass
class VIDConfig:
    weight: float = 1.0
    ce_weight: float = 1.0
    init_variance: float = 5.0
    eps: float = 1e-5
    student_stages: list[int] | None = None
    teacher_stages: list[int] | None = None

    def validate(self, where: str) -> None:
        from kdzoo import KdzooError
        from kdzoo.config.checks import non_negative, positive

        non_negative(self, where, "weight", "ce_weight")
        positive(self, where, "eps")
        if self.init_variance <= self.eps:  # the variance is softplus(alpha) + eps: it starts above eps
            raise KdzooError(f"config key '{where}.init_variance': must be > {where}.eps, got {self.init_variance}")


class VIDRegressor(nn.Module):
    """Student map -> (mean of the teacher map, per-channel variance)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, init_variance: float, eps: float):
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, 1, bias=False),
        )
        self.eps = eps
        # softplus(alpha) + eps == init_variance at the start
        self.alpha = nn.Parameter(torch.full((out_channels,), math.log(math.expm1(init_variance - eps))))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.regressor(x), F.softplus(self.alpha) + self.eps


class VID:
    def __init__(self, config: VIDConfig):
        self.config = config

    @hookimpl
    def kdzoo_plan(self, teacher, student):
        """The (student, teacher) stage pairs: inner stages, paired as attention transfer pairs them."""
        return pair_inner_stages(teacher, student, self.config.student_stages, self.config.teacher_stages)

    @hookimpl
    def kdzoo_feature_taps(self, plan):
        return Taps.of_pairs(plan)

    @hookimpl
    def kdzoo_build_modules(self, teacher, student, plan):
        c = self.config
        regressors = nn.ModuleList(
            VIDRegressor(
                student.stages[s].channels,
                teacher.stages[t].channels,
                teacher.stages[t].channels,
                c.init_variance,
                c.eps,
            )
            for s, t in plan
        )
        return {"regressors": regressors}

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, plan, modules):
        total = 0.0
        for (s, t), regressor in zip(plan, modules["regressors"], strict=True):
            f_s, f_t = pooled_to_smaller(student.feature(s), teacher.feature(t))
            mean, variance = regressor(f_s)
            total = total + vid_loss(mean, variance, f_t)
        return {"vid": total}

    @hookimpl
    def kdzoo_loss_weights(self):
        return {"ce": self.config.ce_weight, "vid": self.config.weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="vid",
        factory=VID,
        config_class=VIDConfig,
        paper="Ahn, Hu, Damianou, Lawrence, Dai. Variational Information Distillation for Knowledge Transfer. "
        "CVPR 2019. arXiv:1904.05835",
        summary="teacher maps made likely under a Gaussian predicted from the student's (inner stages)",
        kind="feature",
        batch="local",  # a mean of per-sample terms: this process's share is enough
        terms=("vid",),
    )
)
