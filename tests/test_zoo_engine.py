"""The zoo's methods through the real engine, on several timm pairs, stacked, and across generations."""

import pytest
import timm
import torch

import kdzoo
from kdzoo.api import Batch, When
from kdzoo.engine import RunState, build_trainer
from kdzoo.registry import registry
from tests.helpers import tiny_config

TERMS = {
    "kd": {"ce", "kd"},
    "fitnets": {"ce", "hint"},
    "at": {"ce", "at"},
    "rkd": {"ce", "rkd_distance", "rkd_angle"},
}


def _fit(cfg, tmp_path):
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    trainer.fit()
    record = trainer.history[-1]
    assert all(torch.isfinite(torch.tensor(v)) for k, v in record["train"].items() if isinstance(v, float))
    assert any(not torch.equal(v, trainer.student.state_dict()[k]) for k, v in before.items())
    return trainer, record


@pytest.mark.parametrize(
    "method, pair",
    [
        ("at", "resnet->resnet"),
        ("at", "resnet->mobilenetv3"),
        ("at", "vit->resnet"),
        ("at", "convnext->resnet"),
        ("at", "resnet->vit"),
        ("rkd", "resnet->resnet"),
        ("rkd", "resnet->mobilenetv3"),
        ("rkd", "vit->resnet"),
        ("rkd", "convnext->resnet"),
        ("rkd", "resnet->vit"),
        ("kd", "convnext->resnet"),
        ("kd", "resnet->vit"),
        ("fitnets", "convnext->resnet"),
        ("fitnets", "resnet->vit"),
        ("fitnets", "resnet->efficientnet"),
    ],
)
def test_method_on_pair(method, pair, tmp_path):
    _, record = _fit(tiny_config([method], pair=pair, out_dir=str(tmp_path)), tmp_path)
    assert TERMS[method] <= set(record["train"])


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


@pytest.mark.parametrize("pair", ["resnet->resnet", "resnet->mobilenetv3", "resnet->vit"])
def test_byot_trains_heads_without_a_teacher_and_exports_a_plain_student(pair, tmp_path):
    cfg = tiny_config(["self-distill"], "variant=byot", pair=pair, out_dir=str(tmp_path))
    trainer, record = _fit(cfg, tmp_path)
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


def test_stacked_kd_at_rkd_total_is_the_weighted_sum(tmp_path):
    cfg = tiny_config(["kd", "at", "rkd"], out_dir=str(tmp_path))
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    x, y = next(trainer.data.train.epoch(0))
    result = trainer.step.losses(Batch(x, y), When(trainer.stages[0]))
    total, terms, weights = result.loss, result.terms, result.weights
    assert set(terms) == {"ce", "kd", "at", "rkd_distance", "rkd_angle"}
    assert weights == {"ce": 0.1, "kd": 0.9, "at": 1000.0, "rkd_distance": 25.0, "rkd_angle": 50.0}
    assert torch.allclose(total, sum(weights[k] * v for k, v in terms.items()))
    trainer.fit()
    logged = trainer.history[-1]["train"]
    assert set(terms) <= set(logged)  # each term logged on its own


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
