"""Trainable connectors that map a student map onto a teacher map's shape, shared by the feature methods
(FitNets' regressor, AB's and OFD's connectors). Not a plugin: no entry point names this module."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.toolkit.shapes import average_pooled


class ConvRegressor(nn.Module):
    """Maps a student feature map (B, Cs, Hs, Ws) onto a teacher's (B, Ct, Ht, Wt)."""

    def __init__(self, student_channels: int, teacher_channels: int, stride_ratio: float, relu: bool = True):
        super().__init__()
        if stride_ratio == 2:  # student map is twice the teacher's
            conv = nn.Conv2d(student_channels, teacher_channels, 3, stride=2, padding=1, bias=False)
        elif stride_ratio == 0.5:  # student map is half the teacher's
            conv = nn.ConvTranspose2d(student_channels, teacher_channels, 4, stride=2, padding=1, bias=False)
        else:  # same size (or an odd ratio, resampled below): a 1x1 conv, as RepDistiller's ConvReg
            conv = nn.Conv2d(student_channels, teacher_channels, 1, bias=False)
        self.conv = conv
        self.bn = nn.BatchNorm2d(teacher_channels)
        self.act = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        x = self.act(self.bn(self.conv(x)))
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
            return average_pooled(x, tuple(size))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class Unchanged(nn.Module):
    """The connector for maps that already have the teacher's shape."""

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return x


def connector(student_stage, teacher_stage) -> nn.Module:
    """A map of ``student_stage`` onto ``teacher_stage``'s shape (``StageInfo`` of each): unchanged
    when channels and stride agree, else conv + BN, resampled, without an activation (for
    pre-activation maps)."""
    if student_stage.channels == teacher_stage.channels and student_stage.reduction == teacher_stage.reduction:
        return Unchanged()
    ratio = teacher_stage.reduction / student_stage.reduction
    return ConvRegressor(student_stage.channels, teacher_stage.channels, ratio, relu=False)
