"""ReviewKD: Chen, Liu, Zhao, Jia. "Distilling Knowledge via Knowledge Review". CVPR 2021.
https://arxiv.org/abs/2104.09044

Knowledge *review*: a student level learns from the teacher's same level and every deeper one. The
student's levels (every stage but the stem, then the pooled embedding as a 1 x 1 map) are fused from
deep to shallow by attention-based fusion (ABF) modules: each maps its level to a middle width, mixes
in the residual fused from the deeper levels (upsampled, weighted by a two-channel sigmoid
attention), and projects onto the teacher's level (3 x 3 conv + BN). Each output matches the
teacher's *pre-activation* map of the paired level (the pooled embedding for the deepest) by the
hierarchical context loss (MSE plus pooled 4/2/1 pyramid levels). Defaults: mdistiller's
``CFG.REVIEWKD`` (CE 1 + ReviewKD 1 warmed up linearly over 20 epochs, middle width ``min(512, the
student's embedding width)``, the student's maps after their activation); its CIFAR-100 config for
resnet32x4 -> resnet8x4 sets the weight to 5 (``configs/cifar100/``). Where a teacher level's map is
larger or smaller than the student's, the fused map is resized to it (nearest), as mdistiller's
ABF does (torchdistill's assumes equal sizes). The multi-stage fusion is the
method's own modules (``kdzoo_build_modules``) over the maps its taps ask for: no core change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo import MethodInfo, Taps, hookimpl, inner_stages, linear_warmup, pair_stages, registering
from kdzoo.losses.reviewkd import hcl_loss


@dataclass
class ReviewKDConfig:
    weight: float = 1.0
    ce_weight: float = 1.0
    warmup_epochs: int = 20
    max_mid_channels: int = 512

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative, positive

        non_negative(self, where, "weight", "ce_weight", "warmup_epochs")
        positive(self, where, "max_mid_channels")


class AttentionBasedFusion(nn.Module):
    """One ABF: a student level (and the residual fused from deeper levels) -> (output at the
    teacher level's width and size, the residual handed to the next, shallower level)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.attention = nn.Sequential(nn.Conv2d(mid_channels * 2, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)  # the authors' initialisation
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: Tensor, residual: Tensor | None = None, out_size: tuple[int, int] | None = None
    ) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.attention is not None and residual is not None:
            residual = F.interpolate(residual, tuple(x.shape[-2:]), mode="nearest")
            z = self.attention(torch.cat([x, residual], dim=1))
            x = x * z[:, :1] + residual * z[:, 1:]
        if out_size is not None and tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, tuple(out_size), mode="nearest")
        return self.conv2(x), x


def _as_map(embedding: Tensor) -> Tensor:
    return embedding.flatten(1)[:, :, None, None]


class ReviewKD:
    def __init__(self, config: ReviewKDConfig):
        self.config = config

    @hookimpl
    def kdzoo_plan(self, teacher, student):
        """The (student, teacher) stage pairs of the levels below the pooled embedding."""
        levels = [*inner_stages(student), len(student.stages) - 1]
        return pair_stages(teacher, student, list(dict.fromkeys(levels)))  # a tiny model may repeat its last

    @hookimpl
    def kdzoo_feature_taps(self, plan):
        student_maps = tuple(s for s, _ in plan)
        teacher_maps = tuple(t for _, t in plan)
        return Taps(student=student_maps, teacher_preact=teacher_maps, student_embedding=True, teacher_embedding=True)

    @hookimpl
    def kdzoo_build_modules(self, teacher, student, plan):
        mid = min(self.config.max_mid_channels, student.embedding_dim)
        ins = [*(student.stages[s].channels for s, _ in plan), student.embedding_dim]
        outs = [*(teacher.stages[t].channels for _, t in plan), teacher.embedding_dim]
        # deepest first: the pooled embedding's ABF has no deeper residual to fuse
        fusions = nn.ModuleList(
            AttentionBasedFusion(i, mid, o, fuse=depth > 0)
            for depth, (i, o) in enumerate(zip(reversed(ins), reversed(outs), strict=True))
        )
        return {"fusions": fusions}

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, plan, modules):
        s_maps = [*(student.feature(s) for s, _ in plan), _as_map(student.embedding)]
        t_maps = [*(teacher.pre_activation(t) for _, t in plan), _as_map(teacher.embedding)]
        total, residual = 0.0, None
        for fusion, s_map, t_map in zip(modules["fusions"], reversed(s_maps), reversed(t_maps), strict=True):
            out, residual = fusion(s_map, residual, tuple(t_map.shape[-2:]))
            total = total + hcl_loss(out, t_map)
        return {"reviewkd": total}

    @hookimpl
    def kdzoo_loss_weights(self, epoch):
        c = self.config
        return {"ce": c.ce_weight, "reviewkd": c.weight * linear_warmup(epoch, c.warmup_epochs)}


kdzoo_register_methods = registering(
    MethodInfo(
        name="reviewkd",
        factory=ReviewKD,
        config_class=ReviewKDConfig,
        paper="Chen, Liu, Zhao, Jia. Distilling Knowledge via Knowledge Review. CVPR 2021. arXiv:2104.09044",
        summary="student levels fused deep to shallow (attention-based fusion) match the teacher's "
        "pre-activation maps by a pyramid MSE",
        kind="feature",
        batch="local",  # a mean of per-sample terms: this process's share is enough
        terms=("reviewkd",),
    )
)
