"""FitNets: a student hint layer, through a trainable regressor, regresses a teacher guided layer.

Romero, Ballas, Kahou, Chassang, Gatta, Bengio. "FitNets: Hints for Thin Deep Nets". ICLR 2015.
https://arxiv.org/abs/1412.6550

``L_hint = MSE(regressor(f_s), f_t)`` (mean over all elements). The regressor is conv + BN + ReLU:
a 3x3 stride-2 conv when the student map is twice the teacher's, a 4x4 stride-2 transposed conv
when it is half, a 1x1 conv otherwise (RepDistiller's ConvReg for equal sizes), then pooled or
interpolated to the teacher's size if the sides still differ (ViT token maps, odd sizes).
Sized from timm's ``feature_info``.

Two schedules:

* ``joint`` (default) — one stage, ``ce_weight * CE + hint_weight * L_hint`` with 1 and 100: the
  variant behind the CRD paper's CIFAR-100 table (RepDistiller).
* ``two_stage`` — the paper's: stage ``hint`` trains the student up to its hint layer plus the
  regressor on ``L_hint`` alone (Adam, ``hint_lr``), then stage ``kd`` trains the whole student
  with Hinton KD (``kd_ce_weight * CE + kd_weight * T^2 KL``).

Stages pair automatically: the student's middle ``feature_info`` stage, and the teacher stage at
the closest relative depth (then stride); ``student_stage`` / ``teacher_stage`` override.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kdzoo import MethodInfo, Stage, Taps, hookimpl, pair_stage, parameters_up_to, registering, soft_target_kl
from kdzoo.losses.fitnets import hint_loss
from kdzoo.toolkit import ConvRegressor


@dataclass
class FitNetsConfig:
    schedule: Literal["joint", "two_stage"] = "joint"
    student_stage: int | None = None
    teacher_stage: int | None = None
    hint_weight: float = 100.0
    ce_weight: float = 1.0
    regressor_relu: bool = True
    hint_epochs: int = 3
    hint_lr: float = 1e-3
    temperature: float = 4.0
    kd_weight: float = 0.9
    kd_ce_weight: float = 0.1

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative, positive

        non_negative(self, where, "hint_weight", "ce_weight", "kd_weight", "kd_ce_weight", "hint_epochs")
        positive(self, where, "hint_lr", "temperature")


class FitNets:
    def __init__(self, config: FitNetsConfig):
        self.config = config

    @hookimpl
    def kdzoo_plan(self, teacher, student):
        """The student's hint stage and the teacher's guided stage (``StageInfo`` each)."""
        s = self.config.student_stage
        s = len(student.stages) // 2 if s is None else student.resolve(s)
        t = self.config.teacher_stage
        t = pair_stage(teacher, student, s) if t is None else teacher.resolve(t)
        return student.stages[s], teacher.stages[t]

    @hookimpl
    def kdzoo_feature_taps(self, plan):
        hint, guided = plan
        return Taps(teacher=(guided.index,), student=(hint.index,))

    @hookimpl
    def kdzoo_build_modules(self, plan):
        hint, guided = plan
        return {
            "regressor": ConvRegressor(
                hint.channels, guided.channels, guided.reduction / hint.reduction, self.config.regressor_relu
            )
        }

    @hookimpl
    def kdzoo_schedule(self, epochs, plan, modules):
        if self.config.schedule == "joint":
            return None
        hint_module, regressor = plan[0].module, modules["regressor"]

        def hint_parameters(model, _every_methods_modules):  # the student up to its hint layer, and the regressor
            return [*parameters_up_to(model, hint_module), *regressor.parameters()]

        return [
            Stage(
                "hint",
                self.config.hint_epochs,
                losses=frozenset({"hint"}),
                trainable=hint_parameters,
                optim={"name": "adam", "lr": self.config.hint_lr, "weight_decay": 0.0, "scheduler": "constant"},
            ),
            Stage(
                "kd", epochs, losses=frozenset({"ce", "kd"}), trainable=lambda student, _modules: student.parameters()
            ),
        ]

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, stage, plan, modules):
        hint, guided = plan
        terms = {}
        # kept: the hint is off in two_stage's long kd stage, which must not run the regressor (its forward,
        # and its BatchNorm statistics' update) for a term that is dropped
        if stage.term_on("hint"):
            target = teacher.feature(guided.index)
            mapped = modules["regressor"](student.feature(hint.index), tuple(target.shape[-2:]))
            terms["hint"] = hint_loss(mapped, target)
        if self.config.schedule == "two_stage":
            terms["kd"] = soft_target_kl(student.logits, teacher.logits, self.config.temperature)
        return terms

    @hookimpl
    def kdzoo_loss_weights(self, stage):
        if self.config.schedule == "joint":
            return {"ce": self.config.ce_weight, "hint": self.config.hint_weight}
        return {"hint": 1.0, "ce": self.config.kd_ce_weight, "kd": self.config.kd_weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="fitnets",
        factory=FitNets,
        config_class=FitNetsConfig,
        paper="Romero et al. FitNets: Hints for Thin Deep Nets. ICLR 2015. arXiv:1412.6550",
        summary="regress a teacher's intermediate features from the student's through a trainable conv regressor",
        kind="feature",
        batch="local",  # a mean of per-sample terms: this process's share is enough
        # two_stage's own KD term only in that schedule: joint FitNets stacks with the kd method (README)
        terms=lambda config: ("hint", "kd") if config.schedule == "two_stage" else ("hint",),
    )
)
