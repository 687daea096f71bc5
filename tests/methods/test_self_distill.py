"""Self-distillation: BYOT's losses by hand and its auxiliary heads trained without a teacher; born-again
generations handed on, with an external teacher as generation zero, resumed exactly."""

import math

import pytest
import timm
import torch

import kdzoo
from kdzoo.engine import RunState, build_trainer
from kdzoo.losses import byot_losses
from kdzoo.registry import registry
from kdzoo_plugins.self_distill import AuxiliaryHead
from tests.helpers import fit_tiny, tiny_config


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


@pytest.mark.parametrize("pair", ["resnet->resnet", "resnet->mobilenetv3", "resnet->vit"])
def test_byot_trains_heads_without_a_teacher_and_exports_a_plain_student(pair, tmp_path):
    cfg = tiny_config(["self-distill"], "variant=byot", pair=pair, out_dir=str(tmp_path))
    trainer, record = fit_tiny(cfg, tmp_path)
    assert trainer.teacher is None and record["train"].keys() >= {"ce", "byot_ce", "byot_kd", "byot_hint"}
    assert len(trainer.modules["self-distill"]["heads"]) == len(trainer.student_info.stages) - 2
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    plain = timm.create_model(cfg.student.model, num_classes=10, in_chans=3, **cfg.student.kwargs)
    assert saved["student"].keys() == plain.state_dict().keys()  # no auxiliary head in the student
    assert any(k.startswith("self-distill.heads.") for k in saved["modules"])
    plain.load_state_dict(saved["student"])


class _Observer:
    """Records outputs at stage boundaries on one fixed batch."""

    def __init__(self, x):
        self.x, self.student_end, self.teacher_start, self.student_start = x, {}, {}, {}

    @kdzoo.hookimpl
    def kdzoo_on_stage_end(self, run, index):
        with torch.no_grad():
            self.student_end[index] = run.student.eval()(self.x).clone()

    @kdzoo.hookimpl(trylast=True)
    def kdzoo_on_stage_start(self, run, index):
        with torch.no_grad():
            if run.teacher is not None:
                self.teacher_start[index] = run.teacher(self.x).clone()
            self.student_start[index] = run.student.eval()(self.x).clone()


@pytest.mark.parametrize("pair", ["resnet->resnet", "resnet->mobilenetv3", "resnet->vit"])
def test_born_again_hands_generation_k_to_k_plus_1(pair, tmp_path):
    cfg = tiny_config(["self-distill"], "generations=2", pair=pair, out_dir=str(tmp_path))
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    assert trainer.teacher is None and [s.name for s in trainer.stages] == ["gen0", "gen1", "gen2"]
    x, _ = next(trainer.data.val.epoch(0))
    observer = _Observer(x[:8])
    trainer.pm.register(observer)
    summary = trainer.fit()
    for k in (0, 1):
        assert torch.allclose(observer.teacher_start[k + 1], observer.student_end[k])  # k's student is k+1's teacher
        assert not torch.allclose(observer.student_start[k + 1], observer.student_end[k])  # a fresh student
    assert [s["name"] for s in summary["stages"]] == ["gen0", "gen1", "gen2"]  # every generation's accuracy
    assert summary["teacher_source"] == "method" and summary["teacher"].endswith("(gen1)")
    assert [r["stage"] for r in trainer.history] == ["gen0", "gen1", "gen2"]
    assert "kd" not in trainer.history[0]["train"] and "kd" in trainer.history[1]["train"]


def test_born_again_with_an_external_teacher_as_generation_zero(tmp_path):
    cfg = tiny_config(["self-distill"], "generations=1", "use_teacher=true", out_dir=str(tmp_path))
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    assert trainer.teacher is not None and [s.name for s in trainer.stages] == ["gen1"]
    trainer.fit()
    assert "kd" in trainer.history[0]["train"]


class _Crash(Exception):
    pass


class _CrashAt:
    def __init__(self, stage, epoch):
        self.at = (stage, epoch)

    @kdzoo.hookimpl
    def kdzoo_on_epoch_end(self, stage, epoch, metrics):
        if (metrics["stage_index"], epoch) == self.at:
            raise _Crash


@pytest.mark.parametrize("crash_at", [(1, 0), (1, 1)], ids=["at-generation-boundary", "mid-generation"])
def test_born_again_resumes_across_generations_exactly(crash_at, tmp_path):
    cfg = tiny_config(["self-distill"], "generations=2", "train.epochs=2", out_dir=str(tmp_path))
    whole = build_trainer(cfg, registry(), tmp_path / "whole", show_progress=False)
    whole.fit()

    crashed = build_trainer(cfg, registry(), tmp_path / "crashed", show_progress=False)
    crashed.pm.register(_CrashAt(*crash_at))
    with pytest.raises(kdzoo.KdzooError, match="failed in kdzoo_on_epoch_end") as failure:
        crashed.fit()
    assert isinstance(failure.value.__cause__, _Crash)
    state = torch.load(tmp_path / "crashed" / "last.pt", weights_only=True)
    assert state["method_teacher"]["name"] == "gen0"  # generation 0, handed over, is in the checkpoint
    resumed = build_trainer(cfg, registry(), tmp_path / "crashed", show_progress=False)
    resumed.fit(resume=RunState.load(tmp_path / "crashed" / "last.pt"))
    for name, value in whole.student.state_dict().items():
        assert torch.equal(value, resumed.student.state_dict()[name]), name
    for name, value in whole.teacher.state_dict().items():
        assert torch.equal(value, resumed.teacher.state_dict()[name]), name
