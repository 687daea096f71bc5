"""CC: the kernel equals torchdistill 1.1.5's, and the loss squares the norm as the paper does."""

import pytest
import torch
import torch.nn.functional as F
import torchdistill.losses.mid_level as td

from kdzoo.losses.cc import cc_loss, correlation_matrix
from tests.helpers import seeded


def test_cc_kernel_equals_torchdistills_and_the_loss_squares_the_papers_norm():
    s, t = F.normalize(torch.randn(8, 16, generator=seeded(9))), F.normalize(torch.randn(8, 16, generator=seeded(10)))
    kernel = {"type": "gaussian", "gamma": 0.4, "max_p": 2}
    loss = td.CCKDLoss("s", "t", kernel_config=kernel, reduction="batchmean")
    assert torch.allclose(correlation_matrix(s, normalize=False), loss.compute_cc_mat_by_gaussian_rbf(s), atol=1e-6)
    theirs = loss({"s": {"output": s}}, {"t": {"output": t}})  # ||C_s - C_t|| / B^2, not squared
    assert cc_loss(s, t).item() == pytest.approx((theirs.item() * 64) ** 2 / 64, rel=1e-5)
    # the Taylor expansion approximates the RBF kernel on unit vectors
    exact = torch.exp(-0.4 * torch.cdist(s, s) ** 2)
    assert (correlation_matrix(s) - exact).abs().max() < 0.1
