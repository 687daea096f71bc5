"""AB: equal to torchdistill 1.1.5's AltActTransferLoss with the depth weights, and by hand."""

import pytest
import torch
import torchdistill.losses.mid_level as td

from kdzoo.losses.ab import ab_loss, boundary_loss
from tests.helpers import seeded


def test_ab_equals_torchdistill_with_the_depth_weights():
    s = [torch.randn(4, 8, 4, 4, generator=seeded(1)), torch.randn(4, 16, 2, 2, generator=seeded(2))]
    t = [torch.randn(4, 8, 4, 4, generator=seeded(3)), torch.randn(4, 16, 2, 2, generator=seeded(4))]
    pairs = {
        f"p{i}": {
            "student": {"io": "output", "path": f"s{i}"},
            "teacher": {"io": "output", "path": f"t{i}"},
            "weight": w,
        }
        for i, w in enumerate([0.5, 1.0])  # 2^(i - n + 1)
    }
    theirs = td.AltActTransferLoss(pairs, margin=1.0, reduction="mean")(
        {f"s{i}": {"output": x} for i, x in enumerate(s)}, {f"t{i}": {"output": x} for i, x in enumerate(t)}
    )
    assert ab_loss(s, t, 1.0).item() == pytest.approx(theirs.item(), rel=1e-5)
    # by hand on one element: teacher on (t > 0), student at 0.5 < margin 1: (0.5 - 1)^2
    assert boundary_loss(torch.tensor([0.5]), torch.tensor([2.0])).item() == pytest.approx(0.25)
    assert boundary_loss(torch.tensor([-2.0]), torch.tensor([-1.0])).item() == 0.0  # off and below -m: no cost
