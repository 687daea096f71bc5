"""PAD-L2: Zhang, Lan, Dai, Zeng, Bai, Chang, Wei. "Prime-Aware Adaptive Distillation". ECCV 2020.
https://arxiv.org/abs/2008.01458

A variance branch (linear + BN on the student's pooled embedding) predicts a log-variance per
dimension; the L2 distance to the teacher's embedding is divided by that variance and the
log-variance added, so the samples the student finds hard weigh less and the "prime" ones more.
Schedule as the reference implementation (torchdistill's PAD config, 10 + 10 epochs): stage ``l2``
(``l2_epochs``) trains the student on CE + the plain MSE of the embeddings, then stage ``pad``
(the run's ``train.epochs``) on CE + PAD-L2 with a fresh variance branch; weights 1 each.
``l2_epochs: 0`` skips the warm-up. When the widths differ, a linear regressor maps the student's
embedding to the teacher's width (torchdistill's config pairs equal widths only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from kdzoo import KdzooError, MethodInfo, Stage, Taps, hookimpl, registering
from kdzoo.losses.pad import pad_l2_loss

WARM_UP = "l2"


@dataclass
class PADConfig:
    weight: float = 1.0
    l2_weight: float = 1.0
    ce_weight: float = 1.0
    l2_epochs: int = 10
    eps: float = 1e-6

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative, positive

        if self.l2_epochs < 0:
            raise KdzooError(f"config key '{where}.l2_epochs' must be >= 0 (0 skips the L2 warm-up)")
        non_negative(self, where, "weight", "l2_weight", "ce_weight")
        positive(self, where, "eps")


class PrimeAwareDistillation:
    def __init__(self, config: PADConfig):
        self.config = config

    @hookimpl
    def kdzoo_feature_taps(self):
        return Taps(teacher_embedding=True, student_embedding=True)

    @hookimpl
    def kdzoo_build_modules(self, teacher, student):
        ds, dt = student.embedding_dim, teacher.embedding_dim
        return {
            "regressor": nn.Identity() if ds == dt else nn.Linear(ds, dt),
            "variance": nn.Sequential(nn.Linear(ds, dt), nn.BatchNorm1d(dt)),
        }

    @hookimpl
    def kdzoo_schedule(self, epochs, modules):
        pad = Stage("pad", epochs)
        if not self.config.l2_epochs:
            return [pad]
        regressor = modules["regressor"]

        def warm_up_parameters(student, _every_methods_modules):
            # the student and the regressor: the variance branch is fresh when PAD starts, as in the
            # reference's second stage
            return [*student.parameters(), *regressor.parameters()]

        return [Stage(WARM_UP, self.config.l2_epochs, trainable=warm_up_parameters), pad]

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, stage, modules):
        embedding = student.embedding
        mapped, target = modules["regressor"](embedding), teacher.embedding
        if stage.name == WARM_UP:
            return {"l2": F.mse_loss(mapped, target.detach())}
        return {"pad": pad_l2_loss(mapped, target, modules["variance"](embedding), self.config.eps)}

    @hookimpl
    def kdzoo_loss_weights(self):
        c = self.config
        return {"ce": c.ce_weight, "l2": c.l2_weight, "pad": c.weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="pad",
        factory=PrimeAwareDistillation,
        config_class=PADConfig,
        paper="Zhang et al. Prime-Aware Adaptive Distillation. ECCV 2020. arXiv:2008.01458",
        summary="embedding L2 weighted per dimension by a learned variance branch (after an L2 warm-up)",
        kind="feature",
        batch="local",  # a mean of per-sample terms: this process's share is enough
        terms=("l2", "pad"),
    )
)
