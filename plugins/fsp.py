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

from kdzoo import KdzooError, MethodInfo, Stage, Taps, hookimpl, pair_stages, parameters_up_to, registering
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
    def kdzoo_plan(self, teacher, student):
        """The (student, teacher) stage pairs, of equal widths."""
        wanted = self.config.student_stages if self.config.student_stages is not None else range(len(student.stages))
        pairs = pair_stages(teacher, student, wanted, self.config.teacher_stages)
        if len(pairs) < 2:  # a flow matrix is between two consecutive stages
            raise KdzooError(
                f"fsp matches flow matrices between consecutive stages, and {len(pairs)} stage pair of "
                f"student {student.name} and teacher {teacher.name} was found; it needs two or more "
                f"(fsp.student_stages / teacher_stages, or a deeper student)"
            )
        unequal = [(s, t) for s, t in pairs if student.stages[s].channels != teacher.stages[t].channels]
        if unequal:
            s, t = unequal[0]
            raise KdzooError(
                f"fsp compares flow matrices channel by channel: student {student.name} stage {s} has "
                f"{student.stages[s].channels} channels, teacher {teacher.name} stage {t} has "
                f"{teacher.stages[t].channels}; use a pair of equal stage widths, or at / nst for this pair"
            )
        return pairs

    @hookimpl
    def kdzoo_feature_taps(self, plan):
        return Taps.of_pairs(plan)

    @hookimpl
    def kdzoo_schedule(self, epochs, student, plan):
        last_module = student.stages[max(s for s, _ in plan)].module
        return [
            Stage(
                "init",
                self.config.init_epochs,
                losses=frozenset({"fsp"}),
                trainable=lambda model, _modules: parameters_up_to(model, last_module),
            ),
            Stage("train", epochs, losses=frozenset({"ce"})),
        ]

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, plan):
        total = 0.0
        for (s1, t1), (s2, t2) in zip(plan, plan[1:], strict=False):  # consecutive stages
            total = total + fsp_flow_loss(
                student.feature(s1), student.feature(s2), teacher.feature(t1), teacher.feature(t2)
            )
        return {"fsp": total}

    @hookimpl
    def kdzoo_loss_weights(self):
        return {"ce": 1.0, "fsp": self.config.weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="fsp",
        factory=FlowOfSolutionProcedure,
        config_class=FSPConfig,
        paper="Yim, Joo, Bae, Kim. A Gift From Knowledge Distillation: Fast Optimization, Network "
        "Minimization and Transfer Learning. CVPR 2017",
        summary="an init stage matching flow (FSP) matrices between consecutive stages, then CE",
        kind="feature",
        batch="local",  # a mean of per-sample terms: this process's share is enough
        terms=("fsp",),
    )
)
