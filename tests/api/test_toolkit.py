"""kdzoo.toolkit's building blocks for method authors, against PyTorch's own."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import seeded


@pytest.mark.parametrize("size, out", [((8, 8), (4, 4)), ((16, 8), (4, 2)), ((7, 7), (3, 3)), ((4, 4), (4, 4))])
def test_average_pooling_is_adaptive_pooling_in_value_and_gradient(size, out):
    from kdzoo.toolkit import average_pooled

    x = torch.randn(2, 3, *size, generator=seeded(40)).requires_grad_(True)
    ours, theirs = average_pooled(x, out), F.adaptive_avg_pool2d(x, out)
    assert torch.allclose(ours, theirs, atol=1e-6)
    weights = torch.randn(theirs.shape, generator=seeded(41))
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    (g_theirs,) = torch.autograd.grad((theirs * weights).sum(), x)
    assert torch.allclose(g_ours, g_theirs, atol=1e-6)
