"""SimKD: Chen, Mei, Zhang, Wang, Wang, Feng, Chen. "Knowledge Distillation with the Reused Teacher
Classifier". CVPR 2022. https://arxiv.org/abs/2203.14001

The student's last feature map goes through a projector (a bottleneck: 1x1 conv to C_t / 2, 3x3
conv, 1x1 conv to C_t, each with BN + ReLU; the authors' ``SimKD`` module, ``factor 2``) and is
matched to the teacher's last map by MSE (the larger map average-pooled to the smaller side); the
student then *predicts with the teacher's classifier*: its logits are the teacher's frozen
classifier applied to the pooled projected map. That network -- student backbone + projector +
teacher classifier -- is what a SimKD run evaluates, exports (``student.safetensors``; ``kdzoo
eval`` and ``kdzoo.load_student`` rebuild it) and counts in ``summary.json``'s ``deployed`` cost.
Defaults: the authors' CIFAR-100 command (``--distill simkd -c 0 -d 0 -b 1 --factor 2``): the
MSE alone (CE weight 0: the student's own classifier is not deployed). That default is made for the
authors' 240 epochs: the MSE's gradient into the student's backbone is small (27x the labels' CE's
smaller at the first step of the Fashion-MNIST leaderboard), so on a short schedule the backbone
barely leaves its initialisation (docs/results/leaderboard/README.md); ``simkd.ce_weight`` adds the
labels' CE on the student's own head.

A teacher whose classifier does not read its average-pooled last map (a ViT: a class token after a
norm) gives the pooled projected map the teacher's pooled embedding to match instead, the input of
the classifier it lends (``align: embedding``, chosen by ``auto``).

The student's map is its last stage's, as the engine taps it (NCHW; a transformer's patch tokens laid
out on their grid), and the deployed network runs the student up to that map: ``forward_features``
where it ends there (ResNet, MobileNetV3, ConvNeXt), timm's ``forward_intermediates`` otherwise. So any
student with stages can be distilled: the layers after its last stage (EfficientNet's conv_head, a
ViT's final norm, MobileNetV3's conv_head after its pooling) belong to the head that SimKD replaces by
the projector and the teacher's classifier, and are neither trained nor run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo import KdzooError, MethodInfo, ModelInfo, Stage, Taps, hookimpl, registering


@dataclass
class SimKDConfig:
    weight: float = 1.0
    ce_weight: float = 0.0
    factor: int = 2
    align: Literal["auto", "map", "embedding"] = "auto"

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative, positive

        non_negative(self, where, "weight", "ce_weight")
        positive(self, where, "factor")


def _cnn_whose_last_stage_is(info: ModelInfo, channels: int) -> bool:
    """A CNN (stages at several strides) whose last stage has ``channels`` channels."""
    pyramid = len({s.reduction for s in info.stages}) > 1
    return bool(info.stages) and pyramid and channels == info.stages[-1].channels


def ends_features_at_last_stage(info: ModelInfo) -> bool:
    """A CNN whose ``forward_features`` returns its last stage's map, which the deployed network then runs;
    a head layer after the pooling (MobileNetV3's conv_head) is fine: SimKD does not deploy it."""
    return _cnn_whose_last_stage_is(info, info.feature_map_channels or info.embedding_dim)


def reads_pooled_last_map(info: ModelInfo) -> bool:
    """A CNN whose classifier reads its average-pooled last stage (pooled width = that stage's)."""
    return _cnn_whose_last_stage_is(info, info.embedding_dim)


class Projector(nn.Module):
    """The authors' bottleneck: 1x1 to C_t/factor, 3x3, 1x1 to C_t, each conv + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, factor: int):
        super().__init__()
        mid = max(out_channels // factor, 1)
        self.transfer = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        for m in self.modules():  # the authors' initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.transfer(x)


def pooled_to(x: Tensor, side: int | None) -> Tensor:
    """``x`` average-pooled to ``side`` x ``side`` when it is larger (SimKD's spatial alignment)."""
    return F.adaptive_avg_pool2d(x, (side, side)) if side is not None and x.shape[-1] > side else x


class DeployedSimKD(nn.Module):
    """Student backbone up to its last stage -> (pooled to the teacher's side) projector -> average pool ->
    teacher classifier. ``stage`` is that stage's index, ``None`` where ``forward_features`` returns its map."""

    def __init__(
        self,
        student: nn.Module,
        projector: Projector,
        classifier: nn.Linear,
        side: int | None,
        stage: int | None = None,
    ):
        super().__init__()
        self.student, self.projector, self.classifier = student, projector, classifier
        self.side, self.stage = side, stage
        if stage is not None and not hasattr(student, "forward_intermediates"):
            raise KdzooError(
                f"simkd deploys the student up to its last stage's map: {type(student).__name__}'s forward_features "
                "does not end there and it has no forward_intermediates (timm's) to stop there"
            )

    def last_map(self, x: Tensor) -> Tensor:
        """The student's last stage's map, as the engine tapped it in training."""
        if self.stage is None:
            return self.student.forward_features(x)
        student: Any = self.student  # a timm model: forward_intermediates is not nn.Module's own
        return student.forward_intermediates(x, indices=[self.stage], intermediates_only=True)[-1]

    def forward(self, x: Tensor) -> Tensor:
        projected = self.projector(pooled_to(self.last_map(x), self.side))
        return self.classifier(projected.mean(dim=(2, 3)))


@dataclass(frozen=True)
class Plan:
    """What SimKD matches: the student's last stage's map against the teacher's last map (``map``) or its
    pooled embedding (``embedding``); the side each map is pooled to (``None``: kept), and the projector's
    width."""

    align: str
    student_stage: int
    teacher_stage: int
    student_side: int | None
    teacher_side: int | None
    teacher_width: int
    #: whether the student's ``forward_features`` returns that map (else the deployed network asks timm's
    #: ``forward_intermediates`` for it)
    student_features_end_there: bool = True


class SimKD:
    def __init__(self, config: SimKDConfig):
        self.config = config
        self.from_teacher = False  # whether kdzoo_on_teacher copied a teacher model's classifier in this run

    @hookimpl
    def kdzoo_plan(self, teacher: ModelInfo, student: ModelInfo) -> Plan:
        if not student.stages:
            raise KdzooError(
                f"simkd projects the student's last stage's map: student {student.name} exposes no stages "
                "(timm's feature_info)"
            )
        align = self.config.align
        align = ("map" if reads_pooled_last_map(teacher) else "embedding") if align == "auto" else align
        if align == "map" and not teacher.stages:
            raise KdzooError(f"simkd.align=map: teacher {teacher.name} exposes no stages; use align=embedding")
        t_side, s_side = teacher.spatial_size(-1), student.spatial_size(-1)
        return Plan(
            align,
            len(student.stages) - 1,
            len(teacher.stages) - 1,
            # the map of the larger side is pooled to the smaller (the authors' spatial alignment)
            t_side if align == "map" and s_side > t_side else None,
            s_side if align == "map" and t_side > s_side else None,
            teacher.stages[-1].channels if align == "map" else teacher.embedding_dim,
            ends_features_at_last_stage(student),
        )

    @hookimpl
    def kdzoo_feature_taps(self, plan):
        if plan.align == "map":
            return Taps(student=(plan.student_stage,), teacher=(plan.teacher_stage,))
        return Taps(student=(plan.student_stage,), teacher_embedding=True)

    @hookimpl
    def kdzoo_build_modules(self, teacher, student, plan):
        projector = Projector(student.stages[-1].channels, plan.teacher_width, self.config.factor)
        # the teacher's classifier, copied in when the teacher model is set (kdzoo_on_teacher) and never trained
        classifier = nn.Linear(teacher.embedding_dim, teacher.num_classes)
        return {"projector": projector, "teacher_classifier": classifier}

    @hookimpl
    def kdzoo_on_teacher(self, teacher, modules):
        head, classifier = teacher.get_classifier(), modules["teacher_classifier"]
        head = head[0] if isinstance(head, tuple) else head
        if not isinstance(head, nn.Linear) or head.in_features != classifier.in_features:
            raise KdzooError(
                f"simkd reuses the teacher's classifier, which must be one linear layer on its pooled embedding; "
                f"this teacher's is {type(head).__name__}"
            )
        classifier.load_state_dict(copy.deepcopy(head.state_dict()))
        self.from_teacher = True

    @hookimpl
    def kdzoo_on_run_start(self, run):
        # a run whose cache was filled before never builds the teacher: refuse the cache every time alike
        if run.config.teacher.cache or not (self.from_teacher or run.history):
            raise KdzooError(
                "simkd reuses the teacher's classifier weights, which a teacher-output cache does not hold: "
                "set teacher.cache=false"
            )

    @hookimpl
    def kdzoo_schedule(self, epochs, modules):
        projector = modules["projector"]

        def trainable(student, _every_methods_modules):
            # the student and the projector: the reused classifier stays the teacher's
            return [*student.parameters(), *projector.parameters()]

        return [Stage("train", epochs, trainable=trainable)]

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, plan, modules):
        projected = modules["projector"](pooled_to(student.feature(plan.student_stage), plan.student_side))
        if plan.align == "map":
            target = pooled_to(teacher.feature(plan.teacher_stage), plan.teacher_side)
            return {"simkd": F.mse_loss(projected, target)}
        return {"simkd": F.mse_loss(projected.mean(dim=(2, 3)), teacher.embedding)}

    @hookimpl
    def kdzoo_deployed_model(self, student, modules, plan):
        stage = None if plan.student_features_end_there else plan.student_stage
        return DeployedSimKD(student, modules["projector"], modules["teacher_classifier"], plan.student_side, stage)

    @hookimpl
    def kdzoo_loss_weights(self):
        return {"ce": self.config.ce_weight, "simkd": self.config.weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="simkd",
        factory=SimKD,
        config_class=SimKDConfig,
        paper="Chen et al. Knowledge Distillation with the Reused Teacher Classifier. CVPR 2022. arXiv:2203.14001",
        summary="a projector maps the student's last map onto the teacher's (MSE); the student deploys with "
        "the projector and the teacher's reused classifier",
        kind="feature",
        batch="local",  # a mean of per-sample terms: this process's share is enough
        terms=("simkd",),
    )
)
