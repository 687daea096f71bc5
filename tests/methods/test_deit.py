"""DeiT's distillation token: the core taps a distilled student's two heads (class and distillation)
in training and evaluates their average; the method's terms equal the paper's hard variant and the
authors' soft ``DistillationLoss`` by hand."""

import pytest
import timm
import torch
import torch.nn.functional as F

from kdzoo import KdzooError
from kdzoo.engine.extract import FeatureExtractor, describe
from kdzoo.registry import run_manager
from kdzoo_plugins.deit import DeiTConfig, DistillationToken
from tests.helpers import logit_terms

TINY = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2, "num_classes": 10}


def _student():
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_distilled_patch16_224", **TINY)


def _terms(config, student_out, teacher_logits):
    method = DistillationToken(config)
    return logit_terms(run_manager({"deit": method}), student_out, teacher_logits)["deit"], method.kdzoo_loss_weights()


def test_the_two_heads_are_tapped_in_training_and_averaged_in_evaluation():
    student = _student()
    info = describe(student, "deit_tiny_distilled_patch16_224", 32)
    assert info.distillation_head and not describe(timm.create_model("test_resnet"), "r", 32).distillation_head
    x = torch.randn(4, 3, 32, 32)
    for embedding in (False, True):  # the embedding path asks the model for its head too
        extractor = FeatureExtractor(student, info, (), embedding, distillation_head=True)
        student.train()
        out = extractor(x)
        assert out.logits.shape == out.distillation_logits.shape == (4, 10)
        assert not torch.allclose(out.logits, out.distillation_logits)
        assert (out.embedding is not None) == embedding
        student.eval()
        with torch.no_grad():
            again, averaged = extractor(x), student(x)
        assert again.distillation_logits is None
        torch.testing.assert_close(averaged, again.logits)
        student.train()
        with torch.no_grad():
            both = extractor(x)
        torch.testing.assert_close(averaged, (both.logits + both.distillation_logits) / 2, rtol=1e-5, atol=1e-5)


def test_hard_variant_is_half_ce_on_labels_half_ce_on_the_teachers_argmax():
    gen = torch.Generator().manual_seed(1)
    cls, dist, t = (torch.randn(8, 10, generator=gen) for _ in range(3))
    out = type("O", (), {"logits": cls, "distillation_logits": dist})()
    term, weights = _terms(DeiTConfig(), out, t)
    by_hand = sum(-F.log_softmax(dist[i], 0)[int(t[i].argmax())] for i in range(8)) / 8
    assert term.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert weights == {"ce": 0.5, "deit": 0.5}


def test_soft_variant_is_the_authors_distillation_loss():
    gen = torch.Generator().manual_seed(2)
    cls, dist, t = (3 * torch.randn(8, 10, generator=gen) for _ in range(3))
    out = type("O", (), {"logits": cls, "distillation_logits": dist})()
    term, weights = _terms(DeiTConfig(variant="soft"), out, t)
    tau = 3.0  # the authors' losses.py: kl_div(..., reduction='sum', log_target=True) * T^2 / numel
    authors = F.kl_div(F.log_softmax(dist / tau, 1), F.log_softmax(t / tau, 1), reduction="sum", log_target=True)
    assert term.item() == pytest.approx((authors * tau * tau / dist.numel()).item(), rel=1e-5)
    assert weights == pytest.approx({"ce": 0.9, "deit": 0.1})


def test_a_student_without_a_distillation_token_is_one_line(tmp_path):
    from kdzoo.engine import build_trainer
    from kdzoo.registry import registry
    from tests.helpers import tiny_config

    with pytest.raises(KdzooError, match=r"deit trains a student's distillation token, and test_\w+ has none"):
        build_trainer(tiny_config(["deit"], out_dir=str(tmp_path)), registry(), tmp_path / "run")
