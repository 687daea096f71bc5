"""ReviewKD: the hierarchical context loss and the attention-based fusion equal torchdistill 1.1.5's
(``HierarchicalContextLoss``, ``AttentionBasedFusion``), and the whole review chain equals one built
from torchdistill's modules with the same weights."""

from types import SimpleNamespace

import pytest
import torch
import torchdistill.losses.mid_level as td
from torchdistill.models.wrapper import AttentionBasedFusion as TheirABF

from kdzoo import ModelInfo, StageInfo
from kdzoo.losses.reviewkd import hcl_loss
from kdzoo_plugins.reviewkd import AttentionBasedFusion, ReviewKD, ReviewKDConfig


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _their_hcl(s, t):
    loss = td.HierarchicalContextLoss("s", "output", "t", "output")
    return loss({"s": {"output": (s, None)}}, {"t": {"output": t}})


@pytest.mark.parametrize("side", [1, 2, 4, 8])
def test_hcl_equals_torchdistill(side):
    s, t = torch.randn(4, 6, side, side, generator=_gen(side)), torch.randn(4, 6, side, side, generator=_gen(9))
    assert hcl_loss(s, t).item() == pytest.approx(_their_hcl(s, t).item(), rel=1e-5)


def _copy_into_theirs(ours: AttentionBasedFusion, fuse: bool) -> TheirABF:
    conv1, conv2 = ours.conv1[0], ours.conv2[0]
    theirs = TheirABF(conv1.in_channels, conv1.out_channels, conv2.out_channels, uses_attention=fuse)
    state = {k.replace("attention.", "attention_conv."): v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state)
    return theirs


def test_attention_based_fusion_equals_torchdistills():
    torch.manual_seed(0)
    ours = AttentionBasedFusion(8, 6, 10, fuse=True).train()
    theirs = _copy_into_theirs(ours, fuse=True).train()
    x, residual = torch.randn(4, 8, 4, 4, generator=_gen(1)), torch.randn(4, 6, 2, 2, generator=_gen(2))
    (out_a, res_a), (out_b, res_b) = ours(x, residual), theirs(x, residual, 4)
    assert torch.allclose(out_a, out_b, atol=1e-6) and torch.allclose(res_a, res_b, atol=1e-6)


def _info(name, channels, embedding):
    reductions = [2, 4, 8, 16]  # 32 px input: 16, 8, 4, 2 positions a side
    stages = tuple(StageInfo(i, c, r, f"layer{i}") for i, (c, r) in enumerate(zip(channels, reductions, strict=True)))
    return ModelInfo(name, stages, num_classes=10, embedding_dim=embedding, img_size=32)


def test_the_review_chain_equals_one_built_from_torchdistills_modules():
    """Student levels 1..3 + the pooled embedding, fused deep to shallow; each output against the
    teacher's pre-activation map of the paired level (the teacher's embedding for the deepest)."""
    torch.manual_seed(0)
    student = _info("s", [16, 16, 32, 64], 64)
    teacher = _info("t", [16, 32, 64, 128], 128)
    method = ReviewKD(ReviewKDConfig())
    plan = method.kdzoo_plan(teacher, student)
    taps = method.kdzoo_feature_taps(plan)
    assert taps.student == (1, 2, 3) and taps.teacher_preact == (1, 2, 3)
    modules = method.kdzoo_build_modules(teacher, student, plan)
    fusions = modules["fusions"].train()
    s_maps = {
        i: torch.randn(4, c, n, n, generator=_gen(10 + i))
        for i, (c, n) in enumerate([(16, 16), (16, 8), (32, 4), (64, 2)])
    }
    t_pre = {
        i: torch.randn(4, c, n, n, generator=_gen(20 + i))
        for i, (c, n) in enumerate([(16, 16), (32, 8), (64, 4), (128, 2)])
    }
    s_emb, t_emb = torch.randn(4, 64, generator=_gen(30)), torch.randn(4, 128, generator=_gen(31))
    s_out = SimpleNamespace(feature=s_maps.__getitem__, embedding=s_emb)
    t_out = SimpleNamespace(pre_activation=t_pre.__getitem__, embedding=t_emb)
    ours = method.kdzoo_compute_losses(s_out, t_out, plan, modules)["reviewkd"]

    theirs_abf = [_copy_into_theirs(f, fuse=i > 0).train() for i, f in enumerate(fusions)]
    levels = [s_emb[:, :, None, None], s_maps[3], s_maps[2], s_maps[1]]
    targets = [t_emb[:, :, None, None], t_pre[3], t_pre[2], t_pre[1]]
    out, residual = theirs_abf[0](levels[0])
    expected = _their_hcl(out, targets[0])
    for abf, level, target in zip(theirs_abf[1:], levels[1:], targets[1:], strict=True):
        out, residual = abf(level, residual, level.shape[-1])
        expected = expected + _their_hcl(out, target)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)
    weights = [method.kdzoo_loss_weights(epoch=e)["reviewkd"] for e in (0, 9, 19, 30)]
    assert weights == pytest.approx([0.05, 0.5, 1.0, 1.0])
