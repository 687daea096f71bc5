"""Self-distillation: the student teaches itself. Two variants (``variant`` in the config).

**Born-Again Networks** (``born_again``) — Furlanello, Lipton, Tschannen, Itti, Anandkumar.
"Born-Again Neural Networks". ICML 2018. https://arxiv.org/abs/1805.04770
Generation 0 trains the student architecture from labels alone; each of the next ``generations``
trains a freshly initialised student with ``ce_weight * CE + kd_weight * T^2 KL`` from the previous
generation, which a stage boundary hands over as the teacher. With ``use_teacher: true`` the
configured external teacher is generation 0 instead. Every generation is a stage, so each one's
accuracy is in the metrics and the summary.

**Be Your Own Teacher** (``byot``) — Zhang, Song, Gao, Chen, Bao, Ma. "Be Your Own Teacher:
Improve the Performance of Convolutional Neural Networks via Self Distillation". ICCV 2019.
https://arxiv.org/abs/1905.08094
No external teacher. Auxiliary heads sit on the student's shallower stages (from ``feature_info``:
every stage but the stem and the last): a bottleneck (1x1 conv to the deepest stage's width, then
stride-2 3x3 convs down to its resolution) and a linear classifier. Each shallow head learns
``0.7 CE + 0.3 T^2 KL(T = 3, target = the deepest head) + 0.03 * MSE(its bottleneck features,
the deepest features)``; the deepest head (the student's own classifier) learns CE. The heads are
modules the method owns, so they are never part of the exported student.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from kdzoo import MethodInfo, ModelInfo, Stage, Taps, hookimpl, inner_stages, registering, soft_target_kl
from kdzoo.losses.self_distill import byot_losses
from kdzoo.toolkit.shapes import average_pooled


@dataclass
class SelfDistillConfig:
    variant: Literal["born_again", "byot"] = "born_again"
    # Born-Again Networks
    generations: int = 2
    use_teacher: bool = False
    temperature: float = 1.0
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    # Be Your Own Teacher
    byot_temperature: float = 3.0
    byot_ce_weight: float = 0.7
    byot_kd_weight: float = 0.3
    byot_hint_weight: float = 0.03
    head_stages: list[int] | None = None

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative, positive

        positive(self, where, "generations", "temperature", "byot_temperature")
        non_negative(self, where, "ce_weight", "kd_weight", "byot_ce_weight", "byot_kd_weight", "byot_hint_weight")


def _bn_relu(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


class AuxiliaryHead(nn.Module):
    """Bottleneck from a shallow stage to the deepest stage's shape, then a classifier."""

    def __init__(self, in_channels: int, out_channels: int, downsamples: int, num_classes: int):
        super().__init__()
        layers = _bn_relu(nn.Conv2d(in_channels, out_channels, 1, bias=False), out_channels)
        for _ in range(downsamples):
            layers += _bn_relu(nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1, bias=False), out_channels)
        self.bottleneck = nn.Sequential(*layers)
        self.classifier = nn.Linear(out_channels, num_classes)

    def forward(self, x: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        features = self.bottleneck(x)
        features = average_pooled(features, tuple(size))
        return features, self.classifier(features.mean(dim=(2, 3)))


@dataclass(frozen=True)
class Plan:
    """Be Your Own Teacher's stages: those with an auxiliary head, and the deepest (the student's own)."""

    head_stages: tuple[int, ...]
    deepest: int


class SelfDistillation:
    def __init__(self, config: SelfDistillConfig):
        self.config = config
        self.byot = config.variant == "byot"

    # ------------------------------------------------------------------ Be Your Own Teacher
    @hookimpl
    def kdzoo_plan(self, student: ModelInfo) -> Plan | None:
        if not self.byot:
            return None
        deepest = len(student.stages) - 1
        wanted = self.config.head_stages if self.config.head_stages is not None else inner_stages(student)
        return Plan(tuple(sorted({student.resolve(i) for i in wanted} - {deepest})), deepest)

    @hookimpl
    def kdzoo_feature_taps(self, plan):
        if plan is None:
            return None
        return Taps(student=(*plan.head_stages, plan.deepest))

    @hookimpl
    def kdzoo_build_modules(self, student: ModelInfo, plan):
        if plan is None:
            return None
        last, heads = student.stages[plan.deepest], nn.ModuleDict()
        for i in plan.head_stages:
            stage = student.stages[i]
            downsamples = max(0, round(math.log2(last.reduction / stage.reduction)))
            heads[str(i)] = AuxiliaryHead(stage.channels, last.channels, downsamples, student.num_classes)
        return {"heads": heads}

    # ------------------------------------------------------------------ Born-Again Networks
    @hookimpl
    def kdzoo_schedule(self, epochs):
        if self.byot:
            return None
        kd = frozenset({"ce", "kd"})
        stages = [] if self.config.use_teacher else [Stage("gen0", epochs, losses=frozenset({"ce"}))]
        return stages + [Stage(f"gen{g}", epochs, losses=kd) for g in range(1, 1 + self.config.generations)]

    @hookimpl
    def kdzoo_on_stage_start(self, run, stage, index, resumed):
        if not self.byot and index > 0 and not resumed:  # every generation starts from a fresh initialisation
            fresh = run.new_student(seed=run.config.train.seed * 1_000 + index)
            run.student.load_state_dict(fresh.state_dict())

    @hookimpl
    def kdzoo_on_stage_end(self, run, stage, index):
        if not self.byot and index + 1 < len(run.stages):  # this generation teaches the next
            run.set_teacher(run.student_copy(), name=stage.name)

    # ------------------------------------------------------------------ both
    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, targets, plan, modules):
        if self.byot:
            deepest = student.feature(plan.deepest)
            size = tuple(deepest.shape[-2:])
            heads = [modules["heads"][str(i)](student.feature(i), size) for i in plan.head_stages]
            return byot_losses(heads, deepest, student.logits, targets, self.config.byot_temperature)
        if teacher is None:  # through kdzoo.get_method (no generations) a born-again student has no teacher
            return {}
        return {"kd": soft_target_kl(student.logits, teacher.logits, self.config.temperature)}

    @hookimpl
    def kdzoo_loss_weights(self):
        c = self.config
        if self.byot:
            return {
                "ce": 1.0,
                "byot_ce": c.byot_ce_weight,
                "byot_kd": c.byot_kd_weight,
                "byot_hint": c.byot_hint_weight,
            }
        return {"ce": c.ce_weight, "kd": c.kd_weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="self-distill",
        factory=SelfDistillation,
        config_class=SelfDistillConfig,
        paper=(
            "Furlanello et al. Born-Again Neural Networks. ICML 2018. arXiv:1805.04770 | "
            "Zhang et al. Be Your Own Teacher. ICCV 2019. arXiv:1905.08094"
        ),
        summary="the student teaches itself: born-again generations, or auxiliary heads on shallow stages (byot)",
        needs_teacher=lambda config: config.variant == "born_again" and config.use_teacher,
        kind="self",
        batch="local",  # a mean of per-sample terms: this process's share is enough
        terms=lambda config: ("byot_ce", "byot_kd", "byot_hint") if config.variant == "byot" else ("kd",),
    )
)
