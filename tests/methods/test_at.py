"""AT: attention maps and the loss (code and paper forms) by hand, pooling the larger map, the objective
using the teacher's attention only, and the pairing of inner stages by depth."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import kdzoo
from kdzoo.engine import build_trainer
from kdzoo.engine.extract import FeatureExtractor
from kdzoo.losses import at_loss, attention_map
from kdzoo.registry import registry
from tests.helpers import tiny_config


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


def test_at_through_the_objective_uses_teacher_attention_only_and_equals_at_on_the_maps():

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


def test_at_pairs_inner_stages_by_depth(tmp_path):
    trainer = build_trainer(
        tiny_config(["at"], pair="resnet->mobilenetv3", out_dir=str(tmp_path)),
        registry(),
        tmp_path / "run",
        show_progress=False,
    )
    objective = trainer.objective
    pairs = objective.methods["at"].kdzoo_plan(teacher=objective.teacher_info, student=objective.student_info)
    assert pairs == [(1, 1), (2, 2), (3, 3)]  # stem and last stage excluded
