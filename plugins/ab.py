"""Activation-boundary transfer: Heo, Lee, Yun, Choi. "Knowledge Transfer via Distillation of
Activation Boundaries Formed by Hidden Neurons". AAAI 2019. https://arxiv.org/abs/1811.03233

At every inner stage pair (paired like attention transfer) a connector (1x1 conv + BN, resampled
when the map sizes differ; none when the shapes already agree) maps the student's *pre-activation*
map onto the teacher's, and the alternative L2 with margin 1 makes each neuron switch on exactly
where the teacher's does; deeper pairs weigh more (``2^(i - n + 1)``). As in the paper and
RepDistiller, this is an **initialisation stage** (``init``, 30 epochs: the connectors and the
student's layers up to the last paired stage train on it alone, weight ``3 / 1000`` as in
RepDistiller's ``ABLoss``), followed by training on the labels (stage ``train``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from kdzoo import KdzooError, MethodInfo, Stage, Taps, hookimpl, pair_inner_stages, parameters_up_to, registering
from kdzoo.losses.ab import ab_loss
from kdzoo.toolkit import connector


@dataclass
class ABConfig:
    weight: float = 0.003  # RepDistiller's ABLoss: / 1000 * 3
    margin: float = 1.0
    init_epochs: int = 30
    student_stages: list[int] | None = None
    teacher_stages: list[int] | None = None

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative

        if self.init_epochs < 1:
            raise KdzooError(f"config key '{where}.init_epochs': AB is learned in its init stage, give it >= 1")
        non_negative(self, where, "weight", "margin")


class ActivationBoundaries:
    def __init__(self, config: ABConfig):
        self.config = config

    @hookimpl
    def kdzoo_plan(self, teacher, student):
        """The (student, teacher) stage pairs."""
        return pair_inner_stages(teacher, student, self.config.student_stages, self.config.teacher_stages)

    @hookimpl
    def kdzoo_feature_taps(self, plan):
        return Taps.of_pairs(plan, preact=True)

    @hookimpl
    def kdzoo_build_modules(self, teacher, student, plan):
        return {"connectors": nn.ModuleList(connector(student.stages[s], teacher.stages[t]) for s, t in plan)}

    @hookimpl
    def kdzoo_schedule(self, epochs, student, plan, modules):
        last_module, connectors = student.stages[max(s for s, _ in plan)].module, modules["connectors"]

        def init_parameters(model, _every_methods_modules):  # the student up to its last paired stage, the connectors
            return [*parameters_up_to(model, last_module), *connectors.parameters()]

        return [
            Stage("init", self.config.init_epochs, losses=frozenset({"ab"}), trainable=init_parameters),
            Stage("train", epochs, losses=frozenset({"ce"}), trainable=lambda student, _modules: student.parameters()),
        ]

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, plan, modules):
        s, t = [], []
        for (si, ti), conn in zip(plan, modules["connectors"], strict=True):
            target = teacher.pre_activation(ti)
            s.append(conn(student.pre_activation(si), tuple(target.shape[-2:])))
            t.append(target)
        return {"ab": ab_loss(s, t, self.config.margin)}

    @hookimpl
    def kdzoo_loss_weights(self):
        return {"ce": 1.0, "ab": self.config.weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="ab",
        factory=ActivationBoundaries,
        config_class=ABConfig,
        paper="Heo, Lee, Yun, Choi. Knowledge Transfer via Distillation of Activation Boundaries Formed by "
        "Hidden Neurons. AAAI 2019. arXiv:1811.03233",
        summary="an init stage transferring where pre-activation neurons switch on (margin 1), then CE",
        kind="feature",
        batch="local",  # a mean of per-sample terms: this process's share is enough
        terms=("ab",),
    )
)
