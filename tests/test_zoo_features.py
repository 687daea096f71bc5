"""PKT, SP, NST, VID, CC and FSP: equal to torchdistill 1.1.5 where it agrees with the paper, in an
exact relation where kdzoo follows the paper instead, and to the papers' equations by hand."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchdistill.losses.mid_level as td

from kdzoo.losses.cc import cc_loss, correlation_matrix
from kdzoo.losses.fsp import fsp_loss, fsp_matrix
from kdzoo.losses.nst import nst_loss
from kdzoo.losses.pkt import pkt_loss
from kdzoo.losses.sp import sp_loss
from kdzoo.losses.vid import vid_loss


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("widths", [(64, 64), (48, 128)])
def test_pkt_equals_torchdistill(widths):
    s, t = torch.randn(16, widths[0], generator=_gen(0)), torch.randn(16, widths[1], generator=_gen(1))
    theirs = td.PKTLoss("f", "output", "f", "output")({"f": {"output": s.clone()}}, {"f": {"output": t.clone()}})
    assert pkt_loss(s, t).item() == pytest.approx(theirs.item(), rel=1e-5)


def test_sp_is_torchdistills_formula_with_the_papers_l2_rows(monkeypatch):
    s, t = torch.randn(8, 16, 4, 4, generator=_gen(2)), torch.randn(8, 32, 2, 2, generator=_gen(3))
    loss = td.SPKDLoss("s", "t", reduction="batchmean")
    l1 = loss({"s": {"output": s}}, {"t": {"output": t}})
    monkeypatch.setattr(td, "normalize", lambda x, p: F.normalize(x, p=2.0))  # the paper's row norm
    l2 = loss({"s": {"output": s}}, {"t": {"output": t}})
    assert sp_loss(s, t).item() == pytest.approx(l2.item(), rel=1e-5)
    assert abs(l1.item() - l2.item()) > 1e-6  # torchdistill's L1 rows are another number
    g = [(x.flatten(1) @ x.flatten(1).t()) for x in (s, t)]
    by_hand = ((g[0] / g[0].norm(dim=1, keepdim=True) - g[1] / g[1].norm(dim=1, keepdim=True)) ** 2).sum() / 64
    assert sp_loss(s, t).item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_nst_is_the_squared_mmd_with_a_polynomial_kernel_by_hand():
    s, t = torch.rand(2, 3, 2, 2, generator=_gen(4)), torch.rand(2, 2, 2, 2, generator=_gen(5))
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
    s = torch.randn(4, 96, 2, 2, generator=_gen(17))
    t = (
        torch.randn(4, 64, 2, 2, generator=_gen(18))
        if agreement is None
        else s + agreement * torch.randn(s.shape, generator=_gen(19))
    )
    ps, pt = F.normalize(s.double().flatten(2), dim=2), F.normalize(t.double().flatten(2), dim=2)

    def k(a, b):
        return (a @ b.transpose(1, 2)).square().mean()

    direct = k(pt, pt) + k(ps, ps) - 2 * k(ps, pt)
    assert nst_loss(s, t).item() == pytest.approx(direct.item(), rel=1e-5)


def test_vid_equals_torchdistill():
    mean, target = torch.randn(4, 8, 3, 3, generator=_gen(6)), torch.randn(4, 8, 3, 3, generator=_gen(7))
    variance = F.softplus(torch.randn(8, generator=_gen(8))) + 1e-5
    pairs = {"p": {"teacher": {"io": "output", "path": "t"}, "student": {"io": "output", "path": "r"}, "weight": 1}}
    theirs = td.VIDLoss(pairs)({"r": {"output": (mean, variance.view(1, -1, 1, 1))}}, {"t": {"output": target}})
    assert vid_loss(mean, variance, target).item() == pytest.approx(theirs.item(), rel=1e-5)


def test_cc_kernel_equals_torchdistills_and_the_loss_squares_the_papers_norm():
    s, t = F.normalize(torch.randn(8, 16, generator=_gen(9))), F.normalize(torch.randn(8, 16, generator=_gen(10)))
    kernel = {"type": "gaussian", "gamma": 0.4, "max_p": 2}
    loss = td.CCKDLoss("s", "t", kernel_config=kernel, reduction="batchmean")
    assert torch.allclose(correlation_matrix(s, normalize=False), loss.compute_cc_mat_by_gaussian_rbf(s), atol=1e-6)
    theirs = loss({"s": {"output": s}}, {"t": {"output": t}})  # ||C_s - C_t|| / B^2, not squared
    assert cc_loss(s, t).item() == pytest.approx((theirs.item() * 64) ** 2 / 64, rel=1e-5)
    # the Taylor expansion approximates the RBF kernel on unit vectors
    exact = torch.exp(-0.4 * torch.cdist(s, s) ** 2)
    assert (correlation_matrix(s) - exact).abs().max() < 0.1


def test_fsp_is_the_mean_squared_difference_and_relates_to_torchdistills_column_norms():
    f1s, f2s = torch.randn(4, 3, 4, 4, generator=_gen(11)), torch.randn(4, 5, 2, 2, generator=_gen(12))
    f1t, f2t = torch.randn(4, 3, 4, 4, generator=_gen(13)), torch.randn(4, 5, 2, 2, generator=_gen(14))
    g_s, g_t = fsp_matrix(f1s, f2s), fsp_matrix(f1t, f2t)
    pooled = F.adaptive_avg_pool2d(f1s, (2, 2)).flatten(2)
    assert torch.allclose(g_s, pooled @ f2s.flatten(2).transpose(1, 2) / 4, atol=1e-6)
    assert fsp_loss([g_s], [g_t]).item() == pytest.approx(((g_s - g_t) ** 2).sum().item() / (4 * 3 * 5), rel=1e-5)
    # torchdistill: the same matrices when no pooling is needed, then sum_b,j ||column_j|| / B (unsquared)
    same = {"first": {"io": "output", "path": "a"}, "second": {"io": "output", "path": "b"}}
    pairs = {"p": {f"{side}_{k}": v for side in ("student", "teacher") for k, v in same.items()}}
    f2s_, f2t_ = torch.randn(4, 5, 4, 4, generator=_gen(15)), torch.randn(4, 5, 4, 4, generator=_gen(16))
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

    s1 = torch.randn(4, 32, sizes[0], sizes[0], generator=_gen(30)).requires_grad_(True)
    s2 = torch.randn(4, 48, sizes[1], sizes[1], generator=_gen(31))
    if agreement is None:
        t1, t2 = torch.randn(4, 32, 4, 4, generator=_gen(32)), torch.randn(4, 48, 2, 2, generator=_gen(33))
    else:
        t1 = s1.detach() + agreement * torch.randn(s1.shape, generator=_gen(34))
        t2 = s2 + agreement * torch.randn(s2.shape, generator=_gen(35))
    s64 = s1.detach().double().requires_grad_(True)
    exact = fsp_loss([fsp_matrix(s64, s2.double())], [fsp_matrix(t1.double(), t2.double())])
    (g_exact,) = torch.autograd.grad(exact, s64)
    ours = fsp_flow_loss(s1, s2, t1, t2)
    (g_ours,) = torch.autograd.grad(ours, s1)
    assert ours.dtype == torch.float32 and ours.item() == pytest.approx(exact.item(), rel=1e-5)
    assert torch.allclose(g_ours.double(), g_exact, rtol=1e-4, atol=1e-5 * g_exact.abs().max().item())


@pytest.mark.parametrize("size, out", [((8, 8), (4, 4)), ((16, 8), (4, 2)), ((7, 7), (3, 3)), ((4, 4), (4, 4))])
def test_average_pooling_is_adaptive_pooling_in_value_and_gradient(size, out):
    from kdzoo.toolkit import average_pooled

    x = torch.randn(2, 3, *size, generator=_gen(40)).requires_grad_(True)
    ours, theirs = average_pooled(x, out), F.adaptive_avg_pool2d(x, out)
    assert torch.allclose(ours, theirs, atol=1e-6)
    weights = torch.randn(theirs.shape, generator=_gen(41))
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    (g_theirs,) = torch.autograd.grad((theirs * weights).sum(), x)
    assert torch.allclose(g_ours, g_theirs, atol=1e-6)
