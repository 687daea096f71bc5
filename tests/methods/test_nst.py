"""NST: the squared MMD with a polynomial kernel by hand, and the N x N route equal to the channel
kernels."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdzoo.losses.nst import nst_loss
from tests.helpers import seeded


def test_nst_is_the_squared_mmd_with_a_polynomial_kernel_by_hand():
    s, t = torch.rand(2, 3, 2, 2, generator=seeded(4)), torch.rand(2, 2, 2, 2, generator=seeded(5))
    total = 0.0
    for b in range(2):
        ps = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in s[b].flatten(1).tolist()]
        pt = [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in t[b].flatten(1).tolist()]

        def k_mean(a, c):
            return sum(sum(x * y for x, y in zip(u, v, strict=True)) ** 2 for u in a for v in c) / (len(a) * len(c))

        total += k_mean(pt, pt) + k_mean(ps, ps) - 2 * k_mean(ps, pt)
    assert nst_loss(s, t).item() == pytest.approx(total / 2, rel=1e-5)
    assert nst_loss(s, s).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("agreement", [None, 1e-3])
def test_nst_through_small_gram_matrices_equals_the_channel_kernels(agreement):
    """Deep stages (few positions, many channels) take the N x N route; the value must equal the
    channel kernels' (in float64), also when the student's patterns nearly match the teacher's."""
    s = torch.randn(4, 96, 2, 2, generator=seeded(17))
    t = (
        torch.randn(4, 64, 2, 2, generator=seeded(18))
        if agreement is None
        else s + agreement * torch.randn(s.shape, generator=seeded(19))
    )
    ps, pt = F.normalize(s.double().flatten(2), dim=2), F.normalize(t.double().flatten(2), dim=2)

    def k(a, b):
        return (a @ b.transpose(1, 2)).square().mean()

    direct = k(pt, pt) + k(ps, ps) - 2 * k(ps, pt)
    assert nst_loss(s, t).item() == pytest.approx(direct.item(), rel=1e-5)
