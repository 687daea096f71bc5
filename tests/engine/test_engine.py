import json

import pytest
import torch

import kdzoo
from kdzoo.api import Batch, When
from kdzoo.config import load_config
from kdzoo.engine import build_trainer
from kdzoo.registry import registry
from tests.helpers import PAIRS, TINY, tiny_config


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("pair", list(PAIRS))
@pytest.mark.parametrize("method", ["kd", "fitnets"])
def test_method_trains_on_pair(method, pair, tmp_path):
    cfg = tiny_config([method], pair=pair, out_dir=str(tmp_path))
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    teacher_before = _params(trainer.teacher)
    student_before = _params(trainer.student)
    modules_before = _params(trainer.modules)
    summary = trainer.fit()

    record = trainer.history[-1]
    terms = {"kd": {"ce", "kd"}, "fitnets": {"ce", "hint"}}[method]
    assert terms <= set(record["train"])
    assert all(torch.isfinite(torch.tensor(record["train"][t])) for t in terms)
    assert summary["teacher_top1"] is not None and 0 <= summary["student_top1"] <= 100
    # the teacher is frozen; the student (and FitNets' regressor) learn
    assert all(torch.equal(v, trainer.teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert any(not torch.equal(v, trainer.student.state_dict()[k]) for k, v in student_before.items())
    if method == "fitnets":
        assert any(not torch.equal(v, trainer.modules.state_dict()[k]) for k, v in modules_before.items())
    assert (tmp_path / "run" / "last.pt").is_file()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["student"] == cfg.student.model


def test_stacked_total_is_weighted_sum_of_terms(tmp_path):
    cfg = tiny_config(["kd", "fitnets"], out_dir=str(tmp_path))
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    stage = trainer.stages[0]
    x, y = next(trainer.data.train.epoch(0))
    result = trainer.step.losses(Batch(x, y), When(stage))
    total, terms, weights = result.loss, result.terms, result.weights
    assert set(terms) == {"ce", "kd", "hint"}
    # kd is selected first, so its CE weight (0.1) wins over FitNets' (1.0); each method weights its own terms
    assert weights == {"ce": 0.1, "kd": 0.9, "hint": 100.0}
    expected = sum(weights[k] * v for k, v in terms.items())
    assert torch.allclose(total, expected)


def test_one_forward_per_model_per_step(tmp_path):
    cfg = tiny_config(["kd", "fitnets"], out_dir=str(tmp_path))
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    calls = {"teacher": 0, "student": 0}
    for role in calls:
        model = getattr(trainer, role)
        original = model.forward_intermediates

        def counted(*args, _role=role, _original=original, **kwargs):
            calls[_role] += 1
            return _original(*args, **kwargs)

        model.forward_intermediates = counted
    x, y = next(trainer.data.train.epoch(0))
    trainer.step.losses(Batch(x, y), When(trainer.stages[0]))
    assert calls == {"teacher": 1, "student": 1}


def test_fitnets_two_stage_trains_hint_then_kd(tmp_path):
    cfg = tiny_config(["fitnets"], "schedule=two_stage", "fitnets.hint_epochs=1", out_dir=str(tmp_path))
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    assert [s.name for s in trainer.stages] == ["hint", "kd"]
    hint_stage = trainer.stages[0]
    after_hint = {n for n, p in trainer.student.named_parameters()}
    params = trainer.step.set_trainable(hint_stage)
    trainable = {n for n, p in trainer.student.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith(("layer3", "layer4", "fc")) for n in trainable)
    assert any(n.startswith("layer2") for n in trainable) and trainable < after_hint
    assert len(params) == len(trainable) + len(list(trainer.modules.parameters()))

    head_before = trainer.student.fc.weight.detach().clone()
    trainer.fit()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in lines] == ["hint", "kd"]
    assert set(lines[0]["train"]) >= {"hint"} and "kd" not in lines[0]["train"] and "ce" not in lines[0]["train"]
    assert {"ce", "kd"} <= set(lines[1]["train"]) and "hint" not in lines[1]["train"]
    assert not torch.equal(head_before, trainer.student.fc.weight)  # the KD stage trains the whole student


def test_hint_stage_leaves_layers_after_hint_untouched(tmp_path):
    cfg = tiny_config(["fitnets"], "schedule=two_stage", "fitnets.hint_epochs=1", out_dir=str(tmp_path))
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    later = {
        k: v.clone()
        for k, v in trainer.student.state_dict().items()
        if k.startswith(("layer3.", "fc.")) and "running" not in k and "num_batches" not in k
    }
    early = trainer.student.layer1[0].conv1.weight.detach().clone()
    after_hint = {}

    class AfterHintStage:
        @kdzoo.hookimpl
        def kdzoo_on_stage_end(self, run, index):
            if index == 0:
                after_hint.update({k: v.clone() for k, v in run.student.state_dict().items()})

    trainer.pm.register(AfterHintStage())
    trainer.fit()
    assert all(torch.equal(v, after_hint[k]) for k, v in later.items())
    assert not torch.equal(early, after_hint["layer1.0.conv1.weight"])


def test_a_stage_lr_scale_scales_the_runs_rate_after_its_optim_overrides(tmp_path):
    cfg = tiny_config(["kd"], "optim.lr=0.2", "optim.scheduler=constant", out_dir=str(tmp_path))
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    rate = {}
    for stage in (
        kdzoo.Stage("half", 1, lr_scale=0.5),
        kdzoo.Stage("adam_quarter", 1, optim={"name": "adam", "lr": 0.01}, lr_scale=0.25),
        kdzoo.Stage("plain", 1),
    ):
        trainer.step.begin(stage)
        optimizer = trainer.step.optimizer
        rate[stage.name] = (type(optimizer).__name__, optimizer.param_groups[0]["lr"])
    assert rate == {"half": ("SGD", 0.1), "adam_quarter": ("Adam", 0.0025), "plain": ("SGD", 0.2)}
    assert trainer.config.optim.lr == 0.2  # what the run records is the user's rate


def test_teacher_is_trained_once_then_cached(tmp_path, capsys):
    cfg = tiny_config(["kd"], out_dir=str(tmp_path))
    first = build_trainer(cfg, registry(), tmp_path / "a", show_progress=True)
    out1 = capsys.readouterr()
    second = build_trainer(cfg, registry(), tmp_path / "b", show_progress=True)
    out2 = capsys.readouterr()
    assert "training" in out1.out + out1.err and "from cache" in out2.out + out2.err
    for k, v in first.teacher.state_dict().items():
        assert torch.equal(v, second.teacher.state_dict()[k])


def test_library_teacher_without_config_source(tmp_path):
    import timm

    cfg = tiny_config(["kd"], out_dir=str(tmp_path))
    teacher = timm.create_model("test_resnet", num_classes=10, in_chans=3)
    trainer = build_trainer(cfg, registry(), tmp_path / "run", teacher=teacher, show_progress=False)
    assert trainer.teacher is teacher
    assert not any(p.requires_grad for p in teacher.parameters())


class _TinyTerm:
    def __init__(self, config):
        pass

    @kdzoo.hookimpl
    def kdzoo_compute_losses(self, student):
        return {"tiny": 4.7e-5 + 1e-9 * student.logits.mean()}


def test_logged_terms_keep_their_significant_digits_whatever_their_scale(tmp_path, capsys):

    from tests.helpers import NoConfig, registry_with_method

    reg = registry_with_method("tiny", _TinyTerm, NoConfig, needs_teacher=False)
    cfg = load_config(
        [],
        [*TINY, "student.model=test_resnet", "train.epochs=1", f"train.out_dir={tmp_path}"],
        ["tiny"],
        reg.config_classes(),
    )
    build_trainer(cfg, reg, tmp_path / "run", show_progress=True).fit()
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["train"]["tiny"] == pytest.approx(4.7e-5, rel=1e-3)  # not rounded to 0.000047
    assert "tiny=4.7e-05" in capsys.readouterr().out  # 4 significant digits on the console, not 0.0000


def test_stacked_methods_weighting_a_term_differently_say_whose_weight_is_used(tmp_path, capsys):
    cfg = tiny_config(["tfkd", "kd"], "kd.ce_weight=0.5", out_dir=str(tmp_path))
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=True)
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("term 'ce'")]
    used = trainer.objective.loss_weights(trainer.stages[0], 0, 0.0)["ce"]  # tfkd's
    assert said == [
        f"term 'ce': weight {used:g} from tfkd (the first method selected), not kd's 0.5; "
        "put the method whose weight you want first"
    ]
    same = tiny_config(["kd", "at"], "kd.ce_weight=1.0", out_dir=str(tmp_path))  # equal weights: nothing to say
    build_trainer(same, registry(), tmp_path / "other", show_progress=True)
    assert "term 'ce'" not in capsys.readouterr().out
