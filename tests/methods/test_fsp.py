"""FSP: the mean squared difference of the flow matrices, in its exact relation to torchdistill 1.1.5's
column norms; stages of unequal width refused; the N x N route equal to the flow matrices."""

import pytest
import torch
import torch.nn.functional as F
import torchdistill.losses.mid_level as td

from kdzoo.losses.fsp import fsp_loss, fsp_matrix
from tests.helpers import seeded


def test_fsp_is_the_mean_squared_difference_and_relates_to_torchdistills_column_norms():
    f1s, f2s = torch.randn(4, 3, 4, 4, generator=seeded(11)), torch.randn(4, 5, 2, 2, generator=seeded(12))
    f1t, f2t = torch.randn(4, 3, 4, 4, generator=seeded(13)), torch.randn(4, 5, 2, 2, generator=seeded(14))
    g_s, g_t = fsp_matrix(f1s, f2s), fsp_matrix(f1t, f2t)
    pooled = F.adaptive_avg_pool2d(f1s, (2, 2)).flatten(2)
    assert torch.allclose(g_s, pooled @ f2s.flatten(2).transpose(1, 2) / 4, atol=1e-6)
    assert fsp_loss([g_s], [g_t]).item() == pytest.approx(((g_s - g_t) ** 2).sum().item() / (4 * 3 * 5), rel=1e-5)
    # torchdistill: the same matrices when no pooling is needed, then sum_b,j ||column_j|| / B (unsquared)
    same = {"first": {"io": "output", "path": "a"}, "second": {"io": "output", "path": "b"}}
    pairs = {"p": {f"{side}_{k}": v for side in ("student", "teacher") for k, v in same.items()}}
    f2s_, f2t_ = torch.randn(4, 5, 4, 4, generator=seeded(15)), torch.randn(4, 5, 4, 4, generator=seeded(16))
    theirs = td.FSPLoss(pairs)(
        {"a": {"output": f1s}, "b": {"output": f2s_}}, {"a": {"output": f1t}, "b": {"output": f2t_}}
    )
    diff = fsp_matrix(f1s, f2s_) - fsp_matrix(f1t, f2t_)
    assert theirs.item() == pytest.approx(diff.norm(dim=1).sum().item() / 4, rel=1e-5)


def test_fsp_refuses_stages_of_unequal_width_in_one_line(tmp_path):
    from kdzoo import KdzooError
    from kdzoo.engine import build_trainer
    from kdzoo.registry import registry
    from tests.helpers import tiny_config

    with pytest.raises(KdzooError, match=r"fsp compares flow matrices channel by channel: student test_resnet stage"):
        build_trainer(tiny_config(["fsp"], out_dir=str(tmp_path)), registry(), tmp_path / "run")


def test_fsp_refuses_a_single_stage_pair_in_one_line(tmp_path):
    """A flow matrix joins two consecutive stages: one pair has none (a one-block transformer)."""
    from kdzoo import KdzooError
    from kdzoo.engine import build_trainer
    from kdzoo.registry import registry
    from tests.helpers import tiny_config

    cfg = tiny_config(["fsp"], "fsp.student_stages=[0]", out_dir=str(tmp_path), pair="resnet->resnet")
    with pytest.raises(KdzooError, match=r"fsp matches flow matrices between consecutive stages, and 1 stage pair"):
        build_trainer(cfg, registry(), tmp_path / "run")


@pytest.mark.parametrize(
    "sizes, agreement",
    [((8, 4), None), ((2, 1), None), ((2, 1), 1e-2), ((2, 1), 1e-3), ((4, 2), None), ((4, 2), 1e-3)],
)
def test_fsp_through_small_grams_equals_the_flow_matrices_in_value_and_gradient(sizes, agreement):
    """Few positions, many channels take the N x N route ((8, 4) takes the C1 x C2 one); value and
    gradient must equal the flow matrices' (computed in float64), also when the student's maps are
    smaller than the teacher's and when the two flows nearly agree (the route's sums then nearly
    cancel, which its float64 absorbs)."""
    from kdzoo.losses.fsp import fsp_flow_loss

    s1 = torch.randn(4, 32, sizes[0], sizes[0], generator=seeded(30)).requires_grad_(True)
    s2 = torch.randn(4, 48, sizes[1], sizes[1], generator=seeded(31))
    if agreement is None:
        t1, t2 = torch.randn(4, 32, 4, 4, generator=seeded(32)), torch.randn(4, 48, 2, 2, generator=seeded(33))
    else:
        t1 = s1.detach() + agreement * torch.randn(s1.shape, generator=seeded(34))
        t2 = s2 + agreement * torch.randn(s2.shape, generator=seeded(35))
    s64 = s1.detach().double().requires_grad_(True)
    exact = fsp_loss([fsp_matrix(s64, s2.double())], [fsp_matrix(t1.double(), t2.double())])
    (g_exact,) = torch.autograd.grad(exact, s64)
    ours = fsp_flow_loss(s1, s2, t1, t2)
    (g_ours,) = torch.autograd.grad(ours, s1)
    assert ours.dtype == torch.float32 and ours.item() == pytest.approx(exact.item(), rel=1e-5)
    assert torch.allclose(g_ours.double(), g_exact, rtol=1e-4, atol=1e-5 * g_exact.abs().max().item())
