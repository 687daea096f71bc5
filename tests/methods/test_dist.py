"""DIST and DIST+: equal to torchdistill 1.1.5's DISTLoss, and DIST+ in its exact relation to
DISTPlusLoss (kdzoo's channel term is 1 - correlation, like DIST's relations)."""

import pytest
import torch
from torchdistill.losses.mid_level import DISTLoss, DISTPlusLoss

from kdzoo.losses.dist import (
    channel_relation_loss,
    dist_inter_loss,
    dist_intra_loss,
    dist_losses,
    spatial_relation_loss,
)
from tests.helpers import logit_pair, td_io


@pytest.mark.parametrize("tau, beta, gamma", [(4.0, 2.0, 2.0), (1.0, 1.0, 1.0), (2.0, 0.5, 3.0)])
def test_dist_equals_torchdistill(tau, beta, gamma):
    s, t = logit_pair(0)
    ours = beta * dist_inter_loss(s, t, tau) + gamma * dist_intra_loss(s, t, tau)
    inter, intra = dist_losses(s, t, tau)
    assert (beta * inter + gamma * intra).item() == pytest.approx(ours.item(), rel=1e-6)
    theirs = DISTLoss(".", "output", ".", "output", beta=beta, gamma=gamma, tau=tau)(td_io(s), td_io(t))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_dist_plus_relations_and_their_exact_relation_to_torchdistill():
    """torchdistill adds the channel *correlation*; kdzoo's term is 1 - correlation, like DIST's."""
    s, t = logit_pair(1, classes=10)
    gen = torch.Generator().manual_seed(2)
    f_s, f_t = torch.randn(16, 8, 4, 4, generator=gen), torch.randn(16, 8, 4, 4, generator=gen)
    loss = DISTPlusLoss(
        "l", "output", "l", "output", "f", "output", "f", "output", beta=2, gamma=2, iota=1, kappa=1, tau=4
    )
    theirs = loss({"l": {"output": s}, "f": {"output": f_s}}, {"l": {"output": t}, "f": {"output": f_t}})
    dist = 2 * dist_inter_loss(s, t, 4.0) + 2 * dist_intra_loss(s, t, 4.0)
    channel, spatial = channel_relation_loss(f_s, f_t), spatial_relation_loss(f_s, f_t)
    assert theirs.item() == pytest.approx((dist + (1 - channel) + spatial).item(), rel=1e-5)
    # and the terms are what their names say, computed by hand
    cs, ct = f_s - f_s.mean(1, keepdim=True), f_t - f_t.mean(1, keepdim=True)
    corr = (cs * ct).sum(1) / ((cs**2).sum(1) * (ct**2).sum(1)).sqrt()
    assert channel.item() == pytest.approx(1 - corr.mean().item(), rel=1e-5)
    assert channel_relation_loss(f_s, f_s).item() == pytest.approx(0.0, abs=1e-6)
