"""A comprehensive overhaul of feature distillation: Heo, Kim, Yun, Park, Kwak, Choi. ICCV 2019.
https://arxiv.org/abs/1904.01866

The student's *pre-ReLU* maps, through connectors (1x1 conv + BN, resampled when sizes differ),
regress the teacher's pre-ReLU maps with a partial L2: the teacher's map is clamped from below at
a per-channel margin ``m = E[t | t < 0]``, and a student already below an "off" target is not
pushed. Every stage but the stem takes part, paired by relative depth; shallower pairs are halved
per step. Trained jointly with CE: ``CE + sum / B / 1000`` as in the authors' CIFAR code.

The margin: the authors derive ``E[t | t < 0]`` from the BatchNorm before each teacher ReLU,
assuming Gaussian responses. kdzoo measures it on the teacher's pre-activation maps of the first
training batch, once, and keeps it in a buffer (saved with the run): the same quantity without the
Gaussian assumption or a BatchNorm, so any teacher (a ViT's blocks included) works, and a
teacher-output cache is enough.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdzoo import MethodInfo, Taps, hookimpl, pair_stages, registering
from kdzoo.losses.ofd import negative_margin, ofd_loss
from kdzoo.toolkit import connector


@dataclass
class OFDConfig:
    weight: float = 0.001  # the authors' CIFAR code: loss_distill.sum() / batch_size / 1000
    ce_weight: float = 1.0
    student_stages: list[int] | None = None  # None: every stage but the stem
    teacher_stages: list[int] | None = None

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative

        non_negative(self, where, "weight", "ce_weight")


class Margins(nn.Module):
    """Per-pair channel margins, measured once from the teacher and then fixed (buffers)."""

    def __init__(self, channels: list[int]):
        super().__init__()
        for i, c in enumerate(channels):
            self.register_buffer(f"margin{i}", torch.zeros(c))
        self.register_buffer("measured", torch.tensor(False))

    def get(self, teacher_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if not bool(self.measured):
            with torch.no_grad():
                for i, t in enumerate(teacher_maps):
                    getattr(self, f"margin{i}").copy_(negative_margin(t))
                self.measured.fill_(True)
        return [getattr(self, f"margin{i}") for i in range(len(teacher_maps))]


class OverhaulFeatureDistillation:
    def __init__(self, config: OFDConfig):
        self.config = config

    @hookimpl
    def kdzoo_plan(self, teacher, student):
        """The (student, teacher) stage pairs (by default every student stage but the stem), by relative depth."""
        wanted = self.config.student_stages
        wanted = wanted if wanted is not None else range(1, len(student.stages))
        return pair_stages(teacher, student, wanted, self.config.teacher_stages)

    @hookimpl
    def kdzoo_feature_taps(self, plan):
        return Taps.of_pairs(plan, preact=True)

    @hookimpl
    def kdzoo_build_modules(self, teacher, student, plan):
        return {
            "connectors": nn.ModuleList(connector(student.stages[s], teacher.stages[t]) for s, t in plan),
            "margins": Margins([teacher.stages[t].channels for _, t in plan]),
        }

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, plan, modules):
        targets = [teacher.pre_activation(t) for _, t in plan]
        mapped = [
            conn(student.pre_activation(s), tuple(target.shape[-2:]))
            for (s, _), conn, target in zip(plan, modules["connectors"], targets, strict=True)
        ]
        return {"ofd": ofd_loss(mapped, targets, modules["margins"].get(targets))}

    @hookimpl
    def kdzoo_loss_weights(self):
        return {"ce": self.config.ce_weight, "ofd": self.config.weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="ofd",
        factory=OverhaulFeatureDistillation,
        config_class=OFDConfig,
        paper="Heo, Kim, Yun, Park, Kwak, Choi. A Comprehensive Overhaul of Feature Distillation. ICCV 2019. "
        "arXiv:1904.01866",
        summary="pre-ReLU features through connectors, partial L2 against margin-clamped teacher maps",
        kind="feature",
        batch="global",  # the margins are measured on the first (global) batch
        terms=("ofd",),
    )
)
