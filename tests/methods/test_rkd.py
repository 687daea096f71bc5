"""RKD: distance and angle terms by hand, the Gram form of the angles equal to the reference B x B x D
form, the anchor blocks and the gradient formed in the forward pass."""

import math
import random

import pytest
import torch
import torch.nn.functional as F

from kdzoo.losses import rkd_angle_loss, rkd_distance_loss, triplet_cosines


def _smooth_l1(a, b):
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
    return sum(0.5 * d * d if d < 1 else d - 0.5 for d in diffs) / len(diffs)


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
