"""VID: equal to torchdistill 1.1.5's VIDLoss."""

import pytest
import torch
import torch.nn.functional as F
import torchdistill.losses.mid_level as td

from kdzoo.losses.vid import vid_loss
from tests.helpers import seeded


def test_vid_equals_torchdistill():
    mean, target = torch.randn(4, 8, 3, 3, generator=seeded(6)), torch.randn(4, 8, 3, 3, generator=seeded(7))
    variance = F.softplus(torch.randn(8, generator=seeded(8))) + 1e-5
    pairs = {"p": {"teacher": {"io": "output", "path": "t"}, "student": {"io": "output", "path": "r"}, "weight": 1}}
    theirs = td.VIDLoss(pairs)({"r": {"output": (mean, variance.view(1, -1, 1, 1))}}, {"t": {"output": target}})
    assert vid_loss(mean, variance, target).item() == pytest.approx(theirs.item(), rel=1e-5)
