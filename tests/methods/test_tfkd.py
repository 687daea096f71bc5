"""Tf-KD: the virtual teacher and self-training variants equal the authors' objective (and the paper's
equation on ten classes); the self variant needs the student's own architecture."""

import pytest
import torch
import torch.nn.functional as F

from kdzoo.losses.tfkd import virtual_teacher_loss
from kdzoo_plugins.tfkd import TfKDConfig
from tests.helpers import logit_pair


def _authors_kl(log_q, p):
    """The authors' nn.KLDivLoss(): its default reduction 'mean' averages over every element, B x C."""
    return F.kl_div(log_q, p, reduction="sum") / p.numel()


def test_tfkd_virtual_teacher_equals_the_authors_objective_on_cifar100():
    s, _ = logit_pair(4, classes=100)
    y = torch.arange(16) % 100
    c = TfKDConfig()
    u = torch.full((16, 100), 0.01 / 99)
    u[torch.arange(16), y] = 0.99
    authors = 0.9 * F.cross_entropy(s, y) + 0.1 * _authors_kl(F.log_softmax(s, 1), F.softmax(u / 20, 1)) * 100.0
    ours = c.virtual_ce_weight * F.cross_entropy(s, y) + c.virtual_weight * virtual_teacher_loss(s, y, 20.0, 0.99)
    assert ours.item() == pytest.approx(authors.item(), rel=1e-5)


def test_tfkd_virtual_teacher_is_the_papers_equation_on_ten_classes():
    """0.9 CE + 0.1 KL(softmax(u / 20) || softmax(s)), the KL summed over the classes, as the paper writes
    it: the same weights for any class count (the authors' multiplier 100 is CIFAR-100's C)."""
    s, _ = logit_pair(6, classes=10)
    y = torch.arange(16) % 10
    u = torch.full((16, 10), 0.01 / 9)
    u[torch.arange(16), y] = 0.99
    p = F.softmax(u.double() / 20, 1)
    kl = (p * (p.log() - F.log_softmax(s.double(), 1))).sum(1).mean()
    c = TfKDConfig()
    ours = c.virtual_ce_weight * F.cross_entropy(s, y) + c.virtual_weight * virtual_teacher_loss(s, y, 20.0, 0.99)
    assert ours.item() == pytest.approx((0.9 * F.cross_entropy(s.double(), y) + 0.1 * kl).item(), rel=1e-5)


def test_tfkd_self_equals_the_authors_objective_on_cifar100():
    from kdzoo import soft_target_kl

    s, t = logit_pair(5, classes=100)
    y = torch.arange(16) % 100
    c = TfKDConfig(variant="self")
    temp = c.temperature
    kl = _authors_kl(F.log_softmax(s / temp, 1), F.softmax(t / temp, 1)) * temp * temp * 50.0
    authors = 0.05 * F.cross_entropy(s, y) + 0.95 * kl
    ours = c.ce_weight * F.cross_entropy(s, y) + c.weight * soft_target_kl(s, t, temp)
    assert ours.item() == pytest.approx(authors.item(), rel=1e-5)


def test_tfkd_self_needs_the_students_own_architecture(tmp_path):
    from kdzoo import KdzooError
    from kdzoo.engine import build_trainer
    from kdzoo.registry import registry
    from tests.helpers import tiny_config

    with pytest.raises(KdzooError, match="set teacher.model=test_resnet"):
        build_trainer(tiny_config(["tfkd"], "tfkd.variant=self", out_dir=str(tmp_path)), registry(), tmp_path / "a")
    same = tiny_config(["tfkd"], "tfkd.variant=self", "teacher.model=test_resnet", out_dir=str(tmp_path))
    summary = build_trainer(same, registry(), tmp_path / "b", show_progress=False).fit()
    assert summary["teacher"] == "test_resnet" and summary["epochs"] == 1 and summary["teacher_source"] == "model"
