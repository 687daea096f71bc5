"""SimKD (issue 14, a method that changes the deployed student): the loss and the deployed logits by
hand from the authors' equations; a run evaluates, exports, scores and counts the deployed network
(student + projector + the teacher's classifier); students whose forward_features does not end at their
last stage (EfficientNet's conv_head, a ViT's tokens) deploy up to that stage's map; the one-line refusals."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import kdzoo
from kdzoo import KdzooError
from kdzoo.cli import main
from kdzoo.engine import build_trainer
from kdzoo.registry import registry
from kdzoo_plugins.simkd import DeployedSimKD
from tests.helpers import tiny_config


def _authors_simkd(feat_s, feat_t, transfer, cls_t):
    """The authors' SimKD.forward, re-derived: pool the larger map to the smaller side, project the
    student's, predict with the teacher's classifier on the pooled projection."""
    s_h, t_h = feat_s.shape[2], feat_t.shape[2]
    source, target = feat_s, feat_t
    if s_h > t_h:
        source = F.adaptive_avg_pool2d(feat_s, (t_h, t_h))
    else:
        target = F.adaptive_avg_pool2d(feat_t, (s_h, s_h))
    projected = transfer(source)
    pred = cls_t(F.adaptive_avg_pool2d(projected, 1).view(projected.size(0), -1))
    return projected, target, pred


@pytest.mark.parametrize(
    ("teacher", "student", "img_size"),
    [
        ("resnet10t", "test_resnet", 64),
        ("test_resnet", "resnet10t", 64),
        ("resnet18", "resnet10t", 32),
        ("resnet10t", "mobilenetv3_small_050", 64),
        ("resnet10t", "test_efficientnet", 64),
        ("resnet10t", "test_convnext", 64),
        ("resnet10t", "test_vit", 32),
    ],
    ids=[
        "student-map-larger",
        "teacher-map-larger",
        "same-side",
        "student-with-a-head-conv-after-pooling",
        "student-with-a-head-conv-before-pooling",
        "convnext-student",
        "vit-student-patch-tokens-as-a-map",
    ],
)
def test_loss_and_deployed_logits_equal_the_authors_equations(teacher, student, img_size):
    torch.manual_seed(0)
    s_kwargs = {"img_size": img_size, "patch_size": 4} if student == "test_vit" else {}
    t_model = timm.create_model(teacher, num_classes=7).eval()
    s_model = timm.create_model(student, num_classes=7, **s_kwargs)
    objective = kdzoo.get_method("simkd", teacher=t_model, student=s_model, img_size=img_size)
    projector = objective.method_modules["simkd"]["projector"]
    x, y = torch.randn(3, 3, img_size, img_size), torch.arange(3)
    objective.eval()  # BatchNorm on running statistics: the same projector output in both passes
    s_model.eval()
    result = objective.loss(kdzoo.Batch(x, y))
    loss = result.loss
    with torch.no_grad():
        # the student's last stage's map: forward_features' output where it ends there (ResNet, MobileNetV3)
        last = len(s_model.feature_info) - 1
        feat_s = s_model.forward_intermediates(x, indices=[last], intermediates_only=True)[-1]
        feat_t = t_model.forward_features(x)
        projected, target, pred = _authors_simkd(feat_s, feat_t, projector.transfer, t_model.get_classifier())
        assert result.terms["simkd"].item() == pytest.approx(F.mse_loss(projected, target).item(), rel=1e-5)
        assert loss.item() == pytest.approx(F.mse_loss(projected, target).item(), rel=1e-5)  # CE weight 0
        torch.testing.assert_close(objective.deployed_model()(x), pred, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pred, t_model.get_classifier()(projected.mean(dim=(2, 3))))


def test_a_run_evaluates_exports_scores_and_counts_the_deployed_network(tmp_path):
    cfg = tiny_config(["simkd"], "train.epochs=2", out_dir=str(tmp_path))
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    classifier_before = trainer.teacher.get_classifier().weight.detach().clone()
    summary = trainer.fit()
    deployed = trainer.objective.deployed_model()
    assert isinstance(deployed, DeployedSimKD)
    reused = trainer.modules["simkd"]["teacher_classifier"].weight
    assert torch.equal(reused, classifier_before)  # reused, never trained

    projector = sum(p.numel() for p in trainer.modules["simkd"]["projector"].parameters())
    classifier = sum(p.numel() for p in trainer.modules["simkd"]["teacher_classifier"].parameters())
    bare = sum(p.numel() for p in trainer.student.parameters())
    assert summary["deployed"]["params"] == bare + projector + classifier
    assert summary["deployed"]["network"] == "student as simkd deploys it" and summary["deployed"]["flops"] > 0

    run = tmp_path / "run"
    exported = json.loads((run / "student.json").read_text())
    assert exported["deployed_by"] == "simkd" and "kdzoo.load_student" in exported["load"]
    loaded = kdzoo.load_student(run / "student.safetensors")
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(loaded(x), deployed.eval()(x))
    last_top1 = trainer.history[-1]["val"]["top1"]
    for path in ("student.safetensors", "last.pt"):
        scored = CliRunner().invoke(main, ["eval", str(run / path)])
        assert scored.exit_code == 0, scored.output
        assert f"top1={last_top1:.2f}" in scored.output, (path, scored.output, last_top1)


def test_students_and_caches_simkd_cannot_deploy_with_are_refused_in_one_line(tmp_path):
    from kdzoo import ModelInfo
    from kdzoo_plugins.simkd import SimKD, SimKDConfig

    teacher = ModelInfo("test_resnet", (kdzoo.StageInfo(0, 8, 32, "layer4"),), 4, 8, 32)
    flat = ModelInfo("flat", (), 4, 8, 32)  # no feature_info: no map to project
    with pytest.raises(KdzooError, match="student flat exposes no stages") as error:
        SimKD(SimKDConfig()).kdzoo_plan(teacher, flat)
    assert "\n" not in str(error.value)
    cfg = tiny_config(["simkd"], "teacher.cache=true", "data.augment=false", out_dir=str(tmp_path))
    with pytest.raises(KdzooError, match="set teacher.cache=false"):
        build_trainer(cfg, registry(), tmp_path / "cached", show_progress=False).fit()


def test_an_efficientnet_student_trains_and_deploys_up_to_its_last_stage(tmp_path):
    """EfficientNet's forward_features ends in conv_head (256 channels here, 64 out of its last stage):
    the projector reads the last stage's map, and the deployed network stops there too."""
    cfg = tiny_config(["simkd"], pair="resnet->efficientnet", out_dir=str(tmp_path))
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    trainer.fit()
    deployed = trainer.objective.deployed_model()
    assert deployed.stage == len(trainer.student.feature_info) - 1
    x = torch.randn(4, 3, 32, 32)
    loaded = kdzoo.load_student(tmp_path / "run" / "student.safetensors")
    torch.testing.assert_close(loaded(x), deployed.eval()(x))


def test_compares_trade_off_table_counts_what_simkd_deploys(tmp_path):
    from tests.helpers import TINY

    sets = [*TINY, "teacher.model=resnet10t", "student.model=test_resnet", "train.epochs=1"]
    args = ["compare", "--methods", "simkd", "--seeds", "1", "--out", str(tmp_path / "cmp")]
    done = CliRunner().invoke(main, [*args, *[a for s in sets for a in ("--set", s)]])
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "cmp" / "results.json").read_text())
    student, deployed = report["models"]["student"], report["models"]["deployed"]["simkd"]
    assert deployed["params"] > student["params"] and deployed["flops"] > student["flops"]
    table = (tmp_path / "cmp" / "results.md").read_text()
    row = f"| student as simkd deploys it | test_resnet + simkd's modules | {deployed['params'] / 1e6:.3f} M |"
    assert row in table
