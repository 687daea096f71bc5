"""FitNets: the hint loss against values worked out by hand, and the conv regressor's layers and shapes
for every ratio of student to teacher map size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdzoo.losses import hint_loss
from kdzoo_plugins.fitnets import ConvRegressor


def _t(data) -> torch.Tensor:
    return torch.tensor(data, dtype=torch.float64)


def test_hint_loss_is_elementwise_mse_mean():
    a = [[[[1.0, 2.0], [3.0, 4.0]]], [[[0.5, -1.0], [2.0, 0.0]]]]  # (2, 1, 2, 2)
    b = [[[[0.0, 2.0], [5.0, 1.0]]], [[[0.5, 1.0], [-1.0, 0.0]]]]
    flat_a = [v for n in a for c in n for r in c for v in r]
    flat_b = [v for n in b for c in n for r in c for v in r]
    expected = sum((x - y) ** 2 for x, y in zip(flat_a, flat_b, strict=True)) / len(flat_a)
    # (1 + 0 + 4 + 9 + 0 + 4 + 9 + 0) / 8 = 27 / 8
    assert expected == pytest.approx(27 / 8)
    got = hint_loss(_t(a), _t(b))
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_hint_loss_teacher_detached():
    student = _t([[[[1.0, 2.0]]]]).requires_grad_(True)
    teacher = _t([[[[0.0, 0.0]]]]).requires_grad_(True)
    hint_loss(student, teacher).backward()
    assert teacher.grad is None
    # d/ds mean((s - t)^2) = 2 (s - t) / N with N = 2.
    assert student.grad.flatten().tolist() == pytest.approx([1.0, 2.0])


@pytest.mark.parametrize(
    ("stride_ratio", "student_side", "teacher_side", "conv_type", "kernel", "stride"),
    [
        (2, 8, 4, nn.Conv2d, 3, 2),  # student map twice the teacher's
        (0.5, 4, 8, nn.ConvTranspose2d, 4, 2),  # student map half the teacher's
        (1, 4, 4, nn.Conv2d, 1, 1),  # same size
        (1, 5, 3, nn.Conv2d, 1, 1),  # still larger after the conv: pooled
        (4, 2, 8, nn.Conv2d, 1, 1),  # still smaller after the conv: interpolated
        (0.25, 2, 8, nn.Conv2d, 1, 1),  # genuine ratio for 2x2 -> 8x8, interpolated
        (4, 16, 4, nn.Conv2d, 1, 1),  # genuine ratio for 16x16 -> 4x4, pooled
    ],
)
def test_conv_regressor_shapes_and_layers(stride_ratio, student_side, teacher_side, conv_type, kernel, stride):
    torch.manual_seed(0)
    reg = ConvRegressor(6, 10, stride_ratio)
    assert type(reg.conv) is conv_type
    assert reg.conv.kernel_size == (kernel, kernel)
    assert reg.conv.stride == (stride, stride)
    assert reg.conv.in_channels == 6 and reg.conv.out_channels == 10
    assert isinstance(reg.bn, nn.BatchNorm2d) and reg.bn.num_features == 10
    assert isinstance(reg.act, nn.ReLU)
    x = torch.randn(2, 6, student_side, student_side)
    out = reg(x, (teacher_side, teacher_side))
    assert tuple(out.shape) == (2, 10, teacher_side, teacher_side)
    if (student_side, stride_ratio) in {(8, 2), (4, 0.5), (4, 1)}:
        # The conv alone lands on the teacher size: the output is post-ReLU, hence non-negative.
        assert out.min().item() >= 0.0


def test_conv_regressor_conv_alone_matches_size_for_documented_ratios():
    # The documented convs produce the teacher size by themselves (no pooling/interpolation).
    x8, x4 = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 4, 4)
    assert ConvRegressor(3, 5, 2).conv(x8).shape[-2:] == (4, 4)
    assert ConvRegressor(3, 5, 0.5).conv(x4).shape[-2:] == (8, 8)
    assert ConvRegressor(3, 5, 1).conv(x4).shape[-2:] == (4, 4)


def test_conv_regressor_without_relu():
    reg = ConvRegressor(4, 8, 1, relu=False)
    assert not any(isinstance(m, nn.ReLU) for m in reg.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in reg.modules())
    torch.manual_seed(0)
    out = reg(torch.randn(4, 4, 3, 3), (3, 3))
    assert out.shape == (4, 8, 3, 3)
    assert out.min().item() < 0.0  # BN output centred on zero, nothing clips it


def test_conv_regressor_with_relu_has_relu_module():
    reg = ConvRegressor(4, 8, 1)
    assert sum(isinstance(m, nn.ReLU) for m in reg.modules()) == 1
    out = reg(torch.randn(4, 4, 3, 3), (3, 3))
    assert out.min().item() >= 0.0


def test_conv_regressor_trains_through_hint_loss():
    torch.manual_seed(0)
    reg = ConvRegressor(4, 6, 2)
    student = torch.randn(2, 4, 8, 8, requires_grad=True)
    teacher = torch.randn(2, 6, 4, 4)
    hint_loss(reg(student, (4, 4)), teacher).backward()
    assert reg.conv.weight.grad is not None and reg.conv.weight.grad.abs().sum() > 0
    assert student.grad is not None and student.grad.abs().sum() > 0
