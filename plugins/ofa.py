"""OFA-KD: Hao, Guo, Han, Tang, Hu, Wang, Xu. "One-for-All: Bridge the Gap Between Heterogeneous
Architectures in Knowledge Distillation". NeurIPS 2023. https://arxiv.org/abs/2310.19444
(reference code: github.com/Hao840/OFAKD, ``distillers/ofa.py``, ``distillers/utils.py``)

Features of heterogeneous models (CNN, ViT, MLP) do not align, so OFA never matches them: a branch
on each chosen student stage projects its map into the *logit* space, and every branch's logits,
as well as the student's own, learn the teacher's logits by the OFA loss
(``kdzoo.losses.ofa.ofa_loss``: ``-sum_c ((p_t + y)^eps - y) log p_s``, batch mean). Only the
teacher's logits are used, so any teacher pairs with any student.

Branches, sized from ``ModelInfo`` (as the authors' ``OFA.__init__``):

* CNN student (stages of growing stride): one depthwise-separable conv block (``SepConv``, stride 2)
  per halving down to the last stage's resolution, channels doubling, the last block out to
  ``max(student, teacher embedding width)``; a 1x1 conv to that width for a stage already at the
  last resolution; then global pooling and a linear layer to the classes.
* ViT student (stages of one stride): patch merging (2x2 tokens -> 1) down to a 7 x 7 grid, the
  first merge to the student's embedding width; ``max(1, chosen stages deeper than this one)``
  transformer blocks (4 heads; the authors' ``max(4 - stage, 1)``); mean over the tokens; linear.

Stages: for a CNN every stage but the first (the stem), i.e. timm ResNet's ``layer1..4``, the
authors' stages 1-4; for a ViT the blocks at 1/6, 1/3, 5/6 and 6/6 of the depth, the authors'
blocks 1, 3, 9, 11 of 12. Branch weights: the authors' ``init_weights`` (conv Kaiming fan-out,
BN 1/0, linear truncated normal 0.02).

Defaults: the authors' CIFAR-100 setting (README "Training on CIFAR-100": ``--ofa-eps 1.0``;
``train.py`` defaults ``--ofa-stage 1 2 3 4 --ofa-loss-weight 1 --ofa-temperature 1
--gt-loss-weight 1 --kd-loss-weight 1``): ``CE + 1 ofa_logits + 1 ofa``, eps 1, T = 1. Their
ImageNet example uses ``eps: [1.5]``. ``eps`` takes one value for every head or one per stage plus
a last one for the student's logits, as ``--ofa-eps`` does.

Differences from the reference, all forced by kdzoo's taps or the reference's own limits:

* kdzoo hands a ViT's tokens over as an NCHW map of patch tokens, without the class token, so the
  ViT branch pools the mean of its tokens (the authors' path for models without a class token)
  where the authors read the class token carried through the branch;
* an odd grid is padded before a merge (the authors assert an even one), and where no merge
  happens and the stage is narrower than the embedding a linear layer widens the tokens (the
  authors assume equal widths); a width not divisible by 4 gets the largest head count dividing it;
* the authors' CIFAR-100 recipe trains CE with label smoothing 0.1; kdzoo's core ``ce`` has none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from kdzoo import KdzooError, MethodInfo, ModelInfo, Taps, hookimpl, registering
from kdzoo.losses.ofa import ofa_loss

BRANCHES = "ofa"  # the branches' losses, summed (the authors' ``loss_ofa``)
LOGITS = "ofa_logits"  # the student's own logits (the authors' ``loss_kd``)
FINAL_GRID = 7  # the authors merge ViT patches down to 7 x 7
VIT_DEPTHS = (1 / 6, 2 / 6, 5 / 6, 6 / 6)  # the authors' blocks 1, 3, 9, 11 of a 12-block ViT
VIT_HEADS = 4


@dataclass
class OFAConfig:
    """OFA's knobs; the defaults are the authors' CIFAR-100 setting."""

    eps: list[float] = field(default_factory=lambda: [1.0])  # one for all heads, or per stage + logits
    temperature: float = 1.0
    weight: float = 1.0  # the branches' summed loss (--ofa-loss-weight)
    logits_weight: float = 1.0  # the student's logits (--kd-loss-weight)
    ce_weight: float = 1.0  # --gt-loss-weight
    stages: list[int] | None = None  # student stages with a branch; None: the authors' choice (see above)
    branch: Literal["auto", "cnn", "vit"] = "auto"  # auto: vit when every stage has the same stride

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative, positive

        if not self.eps:
            raise KdzooError(f"config key '{where}.eps': one or more values > 0, got none")
        positive(self, where, "eps", "temperature")
        non_negative(self, where, "weight", "logits_weight", "ce_weight")
        if self.stages is not None and not self.stages:
            raise KdzooError(f"config key '{where}.stages': name at least one stage, or leave it null")


def is_isotropic(info: ModelInfo) -> bool:
    """Every stage at one stride: a plain transformer (or MLP-mixer) rather than a CNN pyramid."""
    return len(info.stages) > 1 and len({s.reduction for s in info.stages}) == 1


def default_stages(info: ModelInfo) -> list[int]:
    """The authors' four stages: a pyramid's stages past the stem; an isotropic model's blocks at
    1/6, 1/3, 5/6 and 6/6 of its depth."""
    if not info.stages:
        raise KdzooError(f"{info.name} exposes no feature_info stages: OFA needs stages to branch from")
    n = len(info.stages)
    if is_isotropic(info):
        return sorted({max(math.floor(n * d + 0.5), 1) - 1 for d in VIT_DEPTHS})
    return list(range(1, n)) or [0]


class SepConv(nn.Module):
    """Depthwise-separable conv, twice, the first at stride 2 (the authors' ``SepConv``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.op = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, in_channels, 1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


def cnn_branch(in_channels: int, halvings: int, width: int, num_classes: int) -> nn.Sequential:
    """SepConv blocks down ``halvings`` times (channels doubling, the last to ``width``), or a 1x1
    conv to ``width`` when already at the last resolution; pool; linear to the classes."""
    if halvings == 0:
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, width, 1)]
    else:
        blocks, channels = [], in_channels
        for i in range(halvings):
            blocks.append(SepConv(channels, width if i == halvings - 1 else channels * 2))
            channels *= 2
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


class PatchMerging(nn.Module):
    """2 x 2 neighbouring tokens -> one: concat, LayerNorm, linear (Swin's; the authors' copy)."""

    def __init__(self, dim: int, out_dim: int, act: bool):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_dim)
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))  # an odd grid: pad, as timm's Swin
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.act(self.reduction(self.norm(x)))


class TransformerBranch(nn.Module):
    """A ViT stage's branch: patch merging, transformer blocks, token mean, linear to the classes."""

    def __init__(self, in_channels: int, width: int, merges: int, depth: int, num_classes: int):
        super().__init__()
        # the authors: the first merge widens to the embedding, a GELU after every merge but a later last
        self.merges = nn.ModuleList(
            PatchMerging(in_channels if i == 0 else width, width, act=i == 0 or i != merges - 1) for i in range(merges)
        )
        self.widen = nn.Linear(in_channels, width) if merges == 0 and in_channels != width else nn.Identity()
        heads = math.gcd(width, VIT_HEADS)
        self.blocks = nn.Sequential(*(Block(dim=width, num_heads=heads) for _ in range(depth)))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # x: (B, C, H, W) patch tokens
        x = x.permute(0, 2, 3, 1)
        for merge in self.merges:
            x = merge(x)
        x = self.widen(x.flatten(1, 2))
        return self.head(self.blocks(x).mean(dim=1))


def init_weights(module: nn.Module) -> None:
    """The authors' ``init_weights``, applied to every branch module."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_branch(student: ModelInfo, teacher: ModelInfo, stage: int, deeper: int, kind: str) -> nn.Module:
    """The branch of ``stage`` (``deeper``: how many chosen stages lie below it)."""
    info, last = student.stages[stage], student.stages[-1]
    if kind == "vit":
        grid = student.spatial_size(stage)
        merges = max(int(math.log2(grid / FINAL_GRID)), 0)
        branch = TransformerBranch(info.channels, student.embedding_dim, merges, max(deeper, 1), student.num_classes)
    else:
        halvings = max(round(math.log2(last.reduction / info.reduction)), 0)
        width = max(student.embedding_dim, teacher.embedding_dim)
        branch = cnn_branch(info.channels, halvings, width, student.num_classes)
    branch.apply(init_weights)
    return branch


@dataclass(frozen=True)
class Plan:
    """The student stages with a branch, and the eps of each branch followed by the logits' one."""

    stages: tuple[int, ...]
    eps: tuple[float, ...]


class OFA:
    def __init__(self, config: OFAConfig):
        self.config = config

    @hookimpl
    def kdzoo_plan(self, student):
        wanted = self.config.stages if self.config.stages is not None else default_stages(student)
        stages = tuple(dict.fromkeys(student.resolve(i) for i in wanted))
        eps = self.config.eps
        if len(eps) not in (1, len(stages) + 1):
            raise KdzooError(
                f"config key 'ofa.eps': give one value, or one per stage ({len(stages)}) plus one for the "
                f"logits, got {len(eps)}"
            )
        return Plan(stages, tuple(eps * (len(stages) + 1) if len(eps) == 1 else eps))

    @hookimpl
    def kdzoo_feature_taps(self, plan):
        return Taps(student=tuple(sorted(plan.stages)))

    @hookimpl
    def kdzoo_build_modules(self, teacher, student, plan):
        if student.num_classes <= 0 or teacher.num_classes != student.num_classes:
            raise KdzooError(
                f"OFA projects student stages onto the teacher's logits: the student ({student.num_classes} "
                f"classes) and the teacher ({teacher.num_classes}) must have the same classifier"
            )
        kind = self.config.branch if self.config.branch != "auto" else "vit" if is_isotropic(student) else "cnn"
        branches = nn.ModuleDict(
            {
                str(stage): build_branch(student, teacher, stage, sum(s > stage for s in plan.stages), kind)
                for stage in plan.stages
            }
        )
        return {"branches": branches}

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, targets, plan, modules, soft_targets):
        c, t, branches = self.config, teacher.logits, modules["branches"]
        targets = targets if soft_targets is None else soft_targets  # mixed: the authors take the soft labels
        return {
            BRANCHES: sum(
                ofa_loss(branches[str(s)](student.feature(s)), t, targets, eps, c.temperature)
                for s, eps in zip(plan.stages, plan.eps[:-1], strict=True)
            ),
            LOGITS: ofa_loss(student.logits, t, targets, plan.eps[-1], c.temperature),
        }

    @hookimpl
    def kdzoo_loss_weights(self):
        c = self.config
        return {"ce": c.ce_weight, BRANCHES: c.weight, LOGITS: c.logits_weight}


kdzoo_register_methods = registering(
    MethodInfo(
        name="ofa",
        factory=OFA,
        config_class=OFAConfig,
        paper="Hao, Guo, Han, Tang, Hu, Wang, Xu. One-for-All: Bridge the Gap Between Heterogeneous "
        "Architectures in Knowledge Distillation. NeurIPS 2023. arXiv:2310.19444",
        summary="branches project student stages into the logit space; they and the student's logits learn "
        "the teacher's by the OFA loss (target-enhanced CE)",
        kind="logit",
        batch="local",  # a mean of per-sample terms: this process's share is enough
        terms=(BRANCHES, LOGITS),
    )
)
