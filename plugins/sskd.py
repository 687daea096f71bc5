"""SSKD: Xu, Liu, Li, Loy. "Knowledge Distillation Meets Self-Supervision". ECCV 2020.
https://arxiv.org/abs/2006.07114

Each training image comes with its copies turned by 90, 180 and 270 degrees (views
``rotate90/180/270``, ``plugins/views.py``). A projection head (linear, ReLU, linear, the width of the
model's pooled embedding) on each model turns embeddings into representations; a rotated copy's
representation is compared by cosine similarity with every unrotated one of the batch.

Two stages, as the authors train them:

1. ``teacher_head`` (60 epochs; head LR 0.05, x0.1 at epochs 30 and 45): only the teacher's head
   trains, on the contrastive prediction task -- each rotated copy must pick out its own source
   (``AuxSSKDLoss``); the teacher itself stays frozen.
2. ``distill`` (``train.epochs``): the student and its head train with CE 0.1 on the unrotated
   images, KD 0.9 (T = 4) on them, T-SS KD 2.7 (T = 4: the teacher's predictions on the rotated
   copies, on those it classifies right plus all others, ratio 1.0) and SS-KD 10 (T = 0.5: the
   teacher head's similarity rows, on those it matches right plus the best 75 % of the others).

Defaults: the authors' ``student.py`` / ``teacher.py`` arguments (``--ce-weight 0.1 --kd-weight 0.9
--tf-weight 2.7 --ss-weight 10 --kd-T 4 --tf-T 4 --ss-T 0.5 --ratio-tf 1.0 --ratio-ss 0.75
--t-epoch 60 --t-lr 0.05 --t-milestones 30 45``); torchdistill's ``SSKDLoss`` computes the same terms
(its sample config weights CE 1.0). Differences from the authors' pipeline: the copies are turned on
the device after the batch was cropped and flipped (the authors crop each copy on its own), and the
stacked views share one forward pass per model. Through ``kdzoo.get_method`` (no stages) the
head's task and the student's terms train together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kdzoo import INPUT_VIEW, MethodInfo, Stage, Taps, View, hookimpl, registering
from kdzoo.losses.sskd import contrastive_prediction_loss, sskd_terms
from kdzoo.toolkit import rotation

ROTATIONS = tuple(View(f"rotate{90 * k}", rotation(k)) for k in (1, 2, 3))
AUX, HEAD_STAGE = "sskd_aux", "teacher_head"
DISTILL_TERMS = ("sskd_kd", "sskd_tf", "sskd_ss")


@dataclass
class SSKDConfig:
    ce_weight: float = 0.1
    kd_weight: float = 0.9
    tf_weight: float = 2.7
    ss_weight: float = 10.0
    kd_temperature: float = 4.0
    tf_temperature: float = 4.0
    ss_temperature: float = 0.5
    tf_ratio: float = 1.0
    ss_ratio: float = 0.75
    head_epochs: int = 60
    head_lr: float = 0.05
    head_milestones: list[int] = field(default_factory=lambda: [30, 45])

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import between, non_negative, positive

        non_negative(self, where, "ce_weight", "kd_weight", "tf_weight", "ss_weight", "head_epochs", "head_milestones")
        positive(self, where, "kd_temperature", "tf_temperature", "ss_temperature", "head_lr")
        between(self, where, 0, 1, "tf_ratio", "ss_ratio")  # the share of wrongly ranked rows kept


def projection_head(width: int) -> nn.Sequential:
    """The authors' self-supervision head: linear, ReLU, linear, at the embedding's width."""
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, width))


class SelfSupervisedKD:
    def __init__(self, config: SSKDConfig):
        self.config = config

    @hookimpl
    def kdzoo_views(self):
        return list(ROTATIONS)

    @hookimpl
    def kdzoo_feature_taps(self):
        return Taps(teacher_embedding=True, student_embedding=True)

    @hookimpl
    def kdzoo_build_modules(self, teacher, student):
        return {
            "student_head": projection_head(student.embedding_dim),
            "teacher_head": projection_head(teacher.embedding_dim),
        }

    @hookimpl
    def kdzoo_schedule(self, epochs, modules):
        c = self.config
        head_optim = {"lr": c.head_lr, "scheduler": "multistep", "milestones": list(c.head_milestones)}
        teacher_head, student_head = modules["teacher_head"], modules["student_head"]
        return [
            Stage(
                HEAD_STAGE,
                c.head_epochs,
                losses=frozenset({AUX}),
                trainable=lambda _student, _modules: list(teacher_head.parameters()),  # the teacher stays frozen
                optim=head_optim,
            ),
            Stage(
                "distill",
                epochs,
                losses=frozenset({"ce", *DISTILL_TERMS}),
                trainable=lambda student, _modules: [*student.parameters(), *student_head.parameters()],
            ),
        ]

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, targets, stage, views, modules):
        normal = views[INPUT_VIEW]
        rotated = slice(views[ROTATIONS[0].name].start, views[ROTATIONS[-1].name].stop)
        batch = normal.stop - normal.start
        # the rotated rows are stacked view after view: row r comes from unrotated row r mod B
        source = torch.arange(batch, device=targets.device).repeat(len(ROTATIONS))
        t_rep = modules["teacher_head"](teacher.embedding)
        terms = {AUX: contrastive_prediction_loss(t_rep[rotated], t_rep[normal], source)}
        if not any(stage.term_on(term) for term in DISTILL_TERMS):
            # the head's own stage: the student's terms would need the student's forward pass, which a stage
            # that never reads the student does not run at all
            return terms
        c = self.config
        s_rep = modules["student_head"](student.embedding)
        distilled = sskd_terms(
            (student.logits[normal], student.logits[rotated]),
            (teacher.logits[normal], teacher.logits[rotated]),
            (s_rep[normal], s_rep[rotated]),
            (t_rep[normal], t_rep[rotated]),
            targets,
            source,
            (c.kd_temperature, c.tf_temperature, c.ss_temperature),
            (c.tf_ratio, c.ss_ratio),
        )
        named = {"sskd_kd": "unrotated", "sskd_tf": "rotated", "sskd_ss": "similarity"}  # the paper's names
        return {**terms, **{term: distilled[part] for term, part in named.items()}}

    @hookimpl
    def kdzoo_loss_weights(self):
        c = self.config
        return {
            "ce": c.ce_weight,
            AUX: 1.0,
            "sskd_kd": c.kd_weight,
            "sskd_tf": c.tf_weight,
            "sskd_ss": c.ss_weight,
        }


kdzoo_register_methods = registering(
    MethodInfo(
        name="sskd",
        factory=SelfSupervisedKD,
        config_class=SSKDConfig,
        paper="Xu, Liu, Li, Loy. Knowledge Distillation Meets Self-Supervision. ECCV 2020. arXiv:2006.07114",
        summary="rotated copies of each image: the teacher's head learns which copy came from which image, "
        "the student matches its similarities and its predictions on the copies",
        kind="relation",
        terms=(AUX, *DISTILL_TERMS),
    )
)
