"""Neuron selectivity transfer: Huang, Wang. "Like What You Like: Knowledge Distill via Neuron
Selectivity Transfer". 2017. https://arxiv.org/abs/1707.01219

Each channel's spatial activation pattern is a sample of the "neuron selectivity" distribution; the
student matches the teacher's with the squared MMD under the polynomial kernel ``(x . y)^2``, at
every inner stage pair (paired like attention transfer: closest relative depth, then stride).
Channel counts may differ. Defaults: RepDistiller's CIFAR-100 setting, CE + 50 NST on
``feat[1:-1]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdzoo import MethodInfo, Taps, hookimpl, pair_inner_stages, registering
from kdzoo.losses.nst import nst_loss


@dataclass
class NSTConfig:
    weight: float = 50.0
    ce_weight: float = 1.0
    student_stages: list[int] | None = None  # None: every stage but the stem and the last
    teacher_stages: list[int] | None = None  # None: paired by relative depth, then stride

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative

        non_negative(self, where, "weight", "ce_weight")


class NeuronSelectivityTransfer:
    def __init__(self, config: NSTConfig):
        self.config = config

    @hookimpl
    def kdzoo_plan(self, teacher, student):
        """The (student, teacher) stage pairs."""
        return pair_inner_stages(teacher, student, self.config.student_stages, self.config.teacher_stages)

    @hookimpl
    def kdzoo_feature_taps(self, plan):
        return Taps.of_pairs(plan)

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, plan):
        return {"nst": sum(nst_loss(student.feature(s), teacher.feature(t)) for s, t in plan)}

    @hookimpl
    def kdzoo_loss_weights(self):
        return {"ce": self.config.ce_weight, "nst": self.config.weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="nst",
        factory=NeuronSelectivityTransfer,
        config_class=NSTConfig,
        paper="Huang, Wang. Like What You Like: Knowledge Distill via Neuron Selectivity Transfer. 2017. "
        "arXiv:1707.01219",
        summary="match channel activation-pattern distributions by squared MMD (polynomial kernel) at inner stages",
        kind="feature",
        batch="local",  # a mean of per-sample terms: this process's share is enough
        terms=("nst",),
    )
)
