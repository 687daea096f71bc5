"""The flow of solution procedure: Yim, Joo, Bae, Kim. "A Gift From Knowledge Distillation: Fast
Optimization, Network Minimization and Transfer Learning". CVPR 2017.

An FSP matrix ``G = F1^T F2 / (H W)`` describes how a network transforms one stage's map ``F1`` into
the next one's ``F2``. The student learns the teacher's flows in an **initialisation stage**
(``init``: the FSP loss alone, everything but the classifier trains), then trains on the labels
alone (stage ``train``), as in the paper and RepDistiller (``init_epochs`` 30 there, then the usual
240 with CE). The loss is the paper's squared difference of the FSP matrices of consecutive stage
pairs, averaged over the matrix entries as RepDistiller does (torchdistill sums unsquared column
norms: docs/differences-from-torchdistill.md), with weight 1 in the init stage: RepDistiller's
``-b 50`` never reaches its init stage, whose loss is unweighted. FSP matrices compare channel by
channel, so the paired stages of teacher and student must have equal widths: any other pair is
refused when the run is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdzoo import KdzooError, MethodInfo, Stage, Taps, full_precision, hookimpl, pair_stages, parameters_up_to
from kdzoo.losses.fsp import fsp_flow_loss


@dataclass
class FSPConfig:
    weight: float = 1.0  # in the init stage (its only stage)
    init_epochs: int = 30
    student_stages: list[int] | None = None  # None: every stage
    teacher_stages: list[int] | None = None  # None: paired by relative depth, then stride

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative

        if self.init_epochs < 1:
            raise KdzooError(f"config key '{where}.init_epochs': FSP is learned in its init stage, give it >= 1")
        non_negative(self, where, "weight")


class FlowOfSolutionProcedure:
    def __init__(self, config: FSPConfig):
        self.config = config

    @hookimpl
    def kdzoo_feature_taps(self, teacher, student):
        wanted = self.config.student_stages if self.config.student_stages is not None else range(len(student.stages))
        self.pairs = pair_stages(teacher, student, wanted, self.config.teacher_stages)
        unequal = [(s, t) for s, t in self.pairs if student.stages[s].channels != teacher.stages[t].channels]
        if unequal:
            s, t = unequal[0]
            raise KdzooError(
                f"fsp compares flow matrices channel by channel: student {student.name} stage {s} has "
                f"{student.stages[s].channels} channels, teacher {teacher.name} stage {t} has "
                f"{teacher.stages[t].channels}; use a pair of equal stage widths, or at / nst for this pair"
            )
        self.last_module = student.stages[max(s for s, _ in self.pairs)].module
        return Taps.of_pairs(self.pairs)

    @hookimpl
    def kdzoo_schedule(self, epochs):
        return [
            Stage("init", self.config.init_epochs, losses=frozenset({"fsp"}), trainable=self._features),
            Stage("train", epochs, losses=frozenset({"ce"})),
        ]

    def _features(self, student, _modules):
        return parameters_up_to(student, self.last_module)

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, stage):
        if not stage.term_on("fsp"):
            return {}
        total = 0.0
        for (s1, t1), (s2, t2) in zip(self.pairs, self.pairs[1:], strict=False):  # consecutive stages
            s_maps = full_precision(student.feature(s1)), full_precision(student.feature(s2))
            total = total + fsp_flow_loss(
                *s_maps, full_precision(teacher.feature(t1)), full_precision(teacher.feature(t2))
            )
        return {"fsp": total}

    @hookimpl
    def kdzoo_loss_weights(self):
        return {"ce": 1.0, "fsp": self.config.weight}


@hookimpl
def kdzoo_register_methods(register):
    register(
        MethodInfo(
            name="fsp",
            factory=FlowOfSolutionProcedure,
            config_class=FSPConfig,
            paper="Yim, Joo, Bae, Kim. A Gift From Knowledge Distillation: Fast Optimization, Network "
            "Minimization and Transfer Learning. CVPR 2017",
            summary="an init stage matching flow (FSP) matrices between consecutive stages, then CE",
            kind="feature",
            batch="local",  # a mean of per-sample terms: this process's share is enough
        )
    )
