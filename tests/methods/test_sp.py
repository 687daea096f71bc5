"""SP: torchdistill 1.1.5's formula with the paper's L2-normalised Gram rows, and by hand."""

import pytest
import torch
import torch.nn.functional as F
import torchdistill.losses.mid_level as td

from kdzoo.losses.sp import sp_loss
from tests.helpers import seeded


def test_sp_is_torchdistills_formula_with_the_papers_l2_rows(monkeypatch):
    s, t = torch.randn(8, 16, 4, 4, generator=seeded(2)), torch.randn(8, 32, 2, 2, generator=seeded(3))
    loss = td.SPKDLoss("s", "t", reduction="batchmean")
    l1 = loss({"s": {"output": s}}, {"t": {"output": t}})
    monkeypatch.setattr(td, "normalize", lambda x, p: F.normalize(x, p=2.0))  # the paper's row norm
    l2 = loss({"s": {"output": s}}, {"t": {"output": t}})
    assert sp_loss(s, t).item() == pytest.approx(l2.item(), rel=1e-5)
    assert abs(l1.item() - l2.item()) > 1e-6  # torchdistill's L1 rows are another number
    g = [(x.flatten(1) @ x.flatten(1).t()) for x in (s, t)]
    by_hand = ((g[0] / g[0].norm(dim=1, keepdim=True) - g[1] / g[1].norm(dim=1, keepdim=True)) ** 2).sum() / 64
    assert sp_loss(s, t).item() == pytest.approx(by_hand.item(), rel=1e-5)
