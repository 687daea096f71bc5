"""AT, RKD and BYOT losses against values computed by hand from the papers' formulas."""

import math
import random

import pytest
import torch
import torch.nn.functional as F

import kdzoo
from kdzoo.engine.extract import FeatureExtractor
from kdzoo.losses import at_loss, attention_map, byot_losses, rkd_angle_loss, rkd_distance_loss, triplet_cosines
from kdzoo_plugins.self_distill import AuxiliaryHead


def _smooth_l1(a, b):
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
    return sum(0.5 * d * d if d < 1 else d - 0.5 for d in diffs) / len(diffs)


def _attention(fmap):
    """fmap: [C][H][W] lists -> normalised flattened mean over channels of f^2."""
    c, h, w = len(fmap), len(fmap[0]), len(fmap[0][0])
    q = [sum(fmap[k][i][j] ** 2 for k in range(c)) / c for i in range(h) for j in range(w)]
    norm = math.sqrt(sum(v * v for v in q))
    return [v / norm for v in q]


def test_attention_map_and_code_form_by_hand():
    s = [[[1.0, 2.0], [0.0, 1.0]], [[1.0, 0.0], [2.0, 1.0]]]  # C=2, 2x2
    t = [[[0.5, 1.0], [1.0, 3.0]], [[1.0, 1.0], [0.0, 2.0]], [[2.0, 0.0], [1.0, 1.0]]]  # C=3 (widths differ)
    a_s, a_t = _attention(s), _attention(t)
    assert torch.allclose(attention_map(torch.tensor([s])), torch.tensor([a_s]), atol=1e-6)
    expected = sum((x - y) ** 2 for x, y in zip(a_s, a_t, strict=True)) / 4
    got = at_loss(torch.tensor([s]), torch.tensor([t]))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    paper = 0.5 * math.sqrt(sum((x - y) ** 2 for x, y in zip(a_s, a_t, strict=True)))
    assert at_loss(torch.tensor([s]), torch.tensor([t]), form="paper").item() == pytest.approx(paper, rel=1e-5)


def test_attention_pools_the_larger_map_to_the_smaller():
    big = torch.rand(2, 4, 4, 4)
    small = torch.rand(2, 6, 2, 2)
    q = big.pow(2).mean(1, keepdim=True)
    pooled = F.normalize(F.avg_pool2d(q, 2).flatten(1), dim=1)  # 4x4 -> 2x2 by 2x2 averaging
    expected = (pooled - attention_map(small)).pow(2).mean()
    assert torch.allclose(at_loss(big, small), expected)
    assert torch.allclose(at_loss(small, big), expected)


def _dist(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def _rkd_by_hand(s, t):
    n = len(s)

    def distances(e):
        d = [[_dist(e[i], e[j]) for j in range(n)] for i in range(n)]
        positive = [d[i][j] for i in range(n) for j in range(n) if i != j]
        mean = sum(positive) / len(positive)
        return [d[i][j] / mean for i in range(n) for j in range(n)]

    def angles(e):
        out = []
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    if j == i or k == i:
                        out.append(0.0)
                        continue
                    u = [a - b for a, b in zip(e[j], e[i], strict=True)]
                    v = [a - b for a, b in zip(e[k], e[i], strict=True)]
                    out.append(sum(a * b for a, b in zip(u, v, strict=True)) / (_dist(e[j], e[i]) * _dist(e[k], e[i])))
        return out

    return _smooth_l1(distances(s), distances(t)), _smooth_l1(angles(s), angles(t))


def test_rkd_distance_and_angle_by_hand_with_different_widths():
    rng = random.Random(0)
    s = [[rng.uniform(-1, 1) for _ in range(3)] for _ in range(4)]  # student width 3
    t = [[rng.uniform(-2, 2) for _ in range(5)] for _ in range(4)]  # teacher width 5
    want_d, want_a = _rkd_by_hand(s, t)
    st, tt = torch.tensor(s, dtype=torch.float64), torch.tensor(t, dtype=torch.float64)
    assert rkd_distance_loss(st, tt).item() == pytest.approx(want_d, rel=1e-9)
    assert rkd_angle_loss(st, tt).item() == pytest.approx(want_a, rel=1e-9)


def test_rkd_gram_angles_equal_the_reference_bxbxd_form():
    e = torch.randn(16, 32, dtype=torch.float64, requires_grad=True)
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # [i, j] = e_j - e_i
    unit = F.normalize(diff, p=2, dim=2)
    reference = torch.bmm(unit, unit.transpose(1, 2))  # the reference implementations' B x B x D path
    fast = triplet_cosines(e)
    assert torch.allclose(fast, reference, atol=1e-10)
    # F.normalize's 1/eps slope at the zero vectors e_i - e_i costs the reference's gradient its precision;
    # dividing by the norm with 1 on the diagonal gives the same values with exact gradients
    unit = diff / (diff.norm(dim=2, keepdim=True) + torch.eye(16, dtype=e.dtype).unsqueeze(2))
    reference = torch.bmm(unit, unit.transpose(1, 2))
    g_fast = torch.autograd.grad(fast.sum(), e)[0]
    g_ref = torch.autograd.grad(reference.sum(), e)[0]
    assert torch.allclose(g_fast, g_ref, atol=1e-8)


def test_rkd_teacher_gets_no_gradient():
    s = torch.randn(6, 4, requires_grad=True)
    t = torch.randn(6, 8, requires_grad=True)
    (rkd_distance_loss(s, t) + rkd_angle_loss(s, t)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_byot_losses_by_hand():
    logits_shallow = [0.2, -0.4, 1.0]
    deepest_logits = [1.0, 0.0, -1.0]
    target, temp = 2, 3.0
    feat, deep_feat = [0.5, -1.0], [1.5, 1.0]

    def softmax(z, t=1.0):
        m = [math.exp(v / t) for v in z]
        return [v / sum(m) for v in m]

    ce = -math.log(softmax(logits_shallow)[target])
    p_t, p_s = softmax(deepest_logits, temp), softmax(logits_shallow, temp)
    kl = temp**2 * sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s, strict=True))
    hint = sum((a - b) ** 2 for a, b in zip(feat, deep_feat, strict=True)) / 2
    heads = [(torch.tensor([[[[feat[0]]], [[feat[1]]]]]), torch.tensor([logits_shallow]))]
    got = byot_losses(
        heads,
        torch.tensor([[[[deep_feat[0]]], [[deep_feat[1]]]]]),
        torch.tensor([deepest_logits]),
        torch.tensor([target]),
        temp,
    )
    assert got["byot_ce"].item() == pytest.approx(ce, rel=1e-5)
    assert got["byot_kd"].item() == pytest.approx(kl, rel=1e-5)
    assert got["byot_hint"].item() == pytest.approx(hint, rel=1e-5)


def test_auxiliary_head_reaches_the_deepest_shape():
    head = AuxiliaryHead(16, 64, downsamples=2, num_classes=10)
    features, logits = head(torch.randn(2, 16, 16, 16), (4, 4))
    assert features.shape == (2, 64, 4, 4) and logits.shape == (2, 10)


def test_rkd_angle_in_anchor_blocks_equals_one_block_in_value_and_gradient():
    s = torch.randn(12, 8, dtype=torch.float64, requires_grad=True)
    t = torch.randn(12, 5, dtype=torch.float64)
    whole = rkd_angle_loss(s, t)
    blocks = rkd_angle_loss(s, t, block_elements=5 * 12 * 12)  # anchors in blocks of 5, 5, 2
    assert blocks.item() == pytest.approx(whole.item(), rel=1e-12)
    g_whole, g_blocks = (torch.autograd.grad(v, s)[0] for v in (whole, blocks))
    assert torch.allclose(g_blocks, g_whole, atol=1e-12)


def test_rkd_angle_gradient_formed_in_the_forward_pass_equals_autograd_of_the_plain_formula():
    torch.manual_seed(3)
    s = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(10, 4, dtype=torch.float64)
    plain = F.smooth_l1_loss(triplet_cosines(s), triplet_cosines(t))  # autograd through every B^3 op
    g_plain = torch.autograd.grad(plain, s)[0]
    for block in (10**6, 3 * 100):  # one block, and blocks of 3 anchors
        g_fast = torch.autograd.grad(rkd_angle_loss(s, t, block_elements=block), s)[0]
        assert torch.allclose(g_fast, g_plain, atol=1e-12)
    assert torch.autograd.gradcheck(lambda e: rkd_angle_loss(e, t, block_elements=300), (s,))


def test_rkd_angle_keeps_no_cubic_tensor_for_backward():
    b = 96
    s = torch.randn(b, 32, requires_grad=True)
    saved: list[int] = []

    def keep(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda x: x):
        rkd_angle_loss(s, torch.randn(b, 16))
    assert saved and max(saved) <= b * b  # B x B matrices at most, never a B x B x B one


def test_at_through_the_objective_uses_teacher_attention_only_and_equals_at_on_the_maps():
    import timm

    torch.manual_seed(0)
    teacher = timm.create_model("test_resnet", num_classes=10).eval()
    student = timm.create_model("test_efficientnet", num_classes=10).eval()  # same features on every pass
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    objective = kdzoo.get_method("at", student=student, teacher=teacher, img_size=32)
    result = objective.loss(kdzoo.Batch(x, y))
    pairs = objective.methods["at"].kdzoo_plan(teacher=objective.teacher_info, student=objective.student_info)
    teacher_out = objective.teacher_tap(x)
    assert teacher_out.features == {} and len(teacher_out.summaries) == len({t for _, t in pairs})
    whole = FeatureExtractor(teacher, objective.teacher_info, [t for _, t in pairs], embedding=False)(x)
    student_out = objective.student_tap(x)
    expected = sum(at_loss(student_out.feature(s), whole.feature(t)) for s, t in pairs)
    assert result.terms["at"].item() == pytest.approx(expected.item(), rel=1e-5)
