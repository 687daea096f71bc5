"""PKT: equal to torchdistill 1.1.5's PKTLoss."""

import pytest
import torch
import torchdistill.losses.mid_level as td

from kdzoo.losses.pkt import pkt_loss
from tests.helpers import seeded


@pytest.mark.parametrize("widths", [(64, 64), (48, 128)])
def test_pkt_equals_torchdistill(widths):
    s, t = torch.randn(16, widths[0], generator=seeded(0)), torch.randn(16, widths[1], generator=seeded(1))
    theirs = td.PKTLoss("f", "output", "f", "output")({"f": {"output": s.clone()}}, {"f": {"output": t.clone()}})
    assert pkt_loss(s, t).item() == pytest.approx(theirs.item(), rel=1e-5)
