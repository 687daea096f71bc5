"""ICKD: in its exact relation to torchdistill 1.1.5's ChSimLoss (the authors' CIFAR-100 code divides
by C B), by hand, the authors' embedding, and the N x N route equal to the channel Grams."""

import math

import pytest
import torch
import torchdistill.losses.mid_level as td

from kdzoo.losses.ickd import ickd_loss
from kdzoo_plugins.ickd import ICKDConfig, InterChannelCorrelation
from tests.helpers import seeded, td_io


@pytest.mark.parametrize("sizes", [(4, 4), (4, 2)])
def test_ickd_is_torchdistills_chsim_times_the_batch(sizes):
    """kdzoo divides by C B (the authors' CIFAR-100 code), ChSimLoss by C B^2 (their ImageNet code)."""
    s = torch.randn(8, 16, sizes[0], sizes[0], generator=seeded(0))
    t = torch.randn(8, 16, sizes[1], sizes[1], generator=seeded(1))
    pairs = {"p": {"student": {"io": "output", "path": "s"}, "teacher": {"io": "output", "path": "t"}, "weight": 1}}
    theirs = td.ChSimLoss(pairs)(td_io(s, "s"), td_io(t, "t"))
    assert ickd_loss(s, t).item() == pytest.approx(8 * theirs.item(), rel=1e-5)


def test_ickd_by_hand_and_the_embedding_is_the_authors():
    s = [[[1.0, 2.0], [0.0, 1.0]], [[1.0, 0.0], [2.0, 1.0]]]  # one sample, C = 2, 2x2
    t = [[[0.5, 1.0], [1.0, 3.0]], [[2.0, 0.0], [1.0, 1.0]]]

    def rows(fmap):
        flat = [[v for row in ch for v in row] for ch in fmap]
        gram = [[sum(a * b for a, b in zip(u, v, strict=True)) for v in flat] for u in flat]
        return [[g / math.sqrt(sum(x * x for x in r)) for g in r] for r in gram]

    gs, gt = rows(s), rows(t)
    expected = sum((a - b) ** 2 for rs, rt in zip(gs, gt, strict=True) for a, b in zip(rs, rt, strict=True)) / 2
    assert ickd_loss(torch.tensor([s]), torch.tensor([t])).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="embed the student's map first"):
        ickd_loss(torch.rand(2, 3, 2, 2), torch.rand(2, 4, 2, 2))

    from types import SimpleNamespace

    method = InterChannelCorrelation(ICKDConfig())
    teacher = SimpleNamespace(stage=lambda i: SimpleNamespace(index=0, channels=32, reduction=8))
    student = SimpleNamespace(stage=lambda i: SimpleNamespace(index=0, channels=8, reduction=8))
    embed = method.kdzoo_build_modules(plan=method.kdzoo_plan(teacher, student))["embed"]
    convs = [m for m in embed.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.in_channels, c.out_channels, c.bias) for c in convs] == [((1, 1), 8, 32, None)]
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in embed.modules())
    assert embed(torch.rand(2, 8, 3, 3), (3, 3)).shape == (2, 32, 3, 3)


@pytest.mark.parametrize("positions, agreement", [(1, None), (4, None), (9, None), (4, 1e-3)])
def test_ickd_through_small_products_equals_the_channel_grams_in_value_and_gradient(positions, agreement):
    """Few positions, many channels take the N x N route; value and gradient must equal the C x C
    Grams' (in float64), also when the maps nearly agree, and a channel a ReLU switched off (a zero
    Gram row) must not make the gradient NaN."""
    from kdzoo.losses.ickd import channel_correlation

    side = int(positions**0.5)
    s = torch.randn(4, 24, side, side, generator=seeded(20)).relu().requires_grad_(True)
    t = torch.randn(4, 24, side, side, generator=seeded(21)).relu()
    if agreement is not None:
        t = (s.detach() + agreement * torch.randn(s.shape, generator=seeded(22))).relu()
    with torch.no_grad():
        s[0, 3] = 0.0
    s64 = s.detach().double().requires_grad_(True)
    direct = (channel_correlation(s64) - channel_correlation(t.double())).square().sum() / (24 * 4)
    (g_direct,) = torch.autograd.grad(direct, s64)
    ours = ickd_loss(s, t)
    (g_ours,) = torch.autograd.grad(ours, s)
    assert ours.dtype == torch.float32 and ours.item() == pytest.approx(direct.item(), rel=1e-5)
    assert torch.isfinite(g_ours).all()
    assert torch.allclose(g_ours.double(), g_direct, rtol=1e-4, atol=1e-5 * g_direct.abs().max().item())
