"""The optimisation a paper's recipe needs (issue 31, item 4): timm's optimizers and schedules with
warmup, no weight decay on norms and biases, gradient clipping, gradient accumulation, an EMA of the
student, and the best epoch's student kept."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

from kdzoo.api import Batch, When
from kdzoo.cli import main
from kdzoo.config import OptimConfig
from kdzoo.engine import build_trainer
from kdzoo.engine.step import StepSchedule, build_optimizer, no_weight_decay
from kdzoo.errors import KdzooError
from kdzoo.registry import registry
from tests.helpers import tiny_config, whole_and_resumed_after_crash


def _optimizer(**settings):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    cfg = OptimConfig(**settings)
    return model, build_optimizer(cfg, model.parameters(), no_weight_decay(cfg, model))


def test_timm_optimizers_and_decay_only_on_weights():
    _, sgd = _optimizer()
    assert type(sgd) is torch.optim.SGD and sgd.defaults["nesterov"] is False  # timm's "sgd" would be Nesterov
    assert [g["weight_decay"] for g in sgd.param_groups] == [5e-4]  # RepDistiller: decay on everything
    model, lamb = _optimizer(name="lamb", weight_decay=0.05, decay_norm_bias=False)
    assert type(lamb).__name__ == "Lamb"
    decayed, spared = lamb.param_groups
    assert decayed["weight_decay"] == 0.05 and [p.ndim for p in decayed["params"]] == [2]
    assert spared["weight_decay"] == 0.0 and len(spared["params"]) == 3  # the bias and LayerNorm's two
    with pytest.raises(KdzooError, match="unknown optimizer 'lambb'.*did you mean 'lamb'"):
        OptimConfig(name="lambb").validate("optim")


def test_a_vits_position_embedding_gets_no_decay():
    import timm

    vit = timm.create_model("test_vit", img_size=32, patch_size=4)
    spared = {id(p) for p in no_weight_decay(OptimConfig(decay_norm_bias=False), vit)}
    assert id(vit.pos_embed) in spared and id(vit.cls_token) in spared
    assert id(vit.patch_embed.proj.weight) not in spared


def _rates(cfg, epochs=4, steps=5, start=0, resume_at=None):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    schedule = StepSchedule(cfg, optimizer, epochs, steps)
    if resume_at is not None:
        schedule.load_state_dict({"steps": resume_at})
    rates = []
    for _ in range(start, epochs * steps):
        rates.append(optimizer.param_groups[0]["lr"])
        schedule.step()
    return rates


def test_warmup_then_cosine_is_a_closed_form_of_the_step():
    cfg = OptimConfig(lr=0.1, warmup_epochs=1, warmup_lr=0.01, min_lr=0.001)
    rates = _rates(cfg)
    assert rates[:5] == pytest.approx([0.01 + i * 0.09 / 5 for i in range(5)])  # linear, per step
    after = [0.001 + 0.5 * 0.099 * (1 + math.cos(math.pi * t / 15)) for t in range(15)]
    assert rates[5:] == pytest.approx(after)  # the cosine over the 15 steps after the warmup
    assert _rates(cfg, start=7, resume_at=7) == rates[7:]  # resumed: the same rates, exactly
    longer = _rates(cfg, epochs=6)
    assert _rates(cfg, epochs=6, start=7, resume_at=7) == longer[7:]  # a longer resumed run: the new length's
    # without warmup, the schedule the CIFAR recipes used before (cosine to 0, milestones in epochs)
    assert _rates(OptimConfig(lr=0.1)) == pytest.approx([0.05 * (1 + math.cos(math.pi * t / 20)) for t in range(20)])
    steps = _rates(OptimConfig(lr=0.1, scheduler="multistep", milestones=[2, 3], gamma=0.1))
    assert steps == pytest.approx([0.1] * 10 + [0.01] * 5 + [0.001] * 5)
    # checkpoints from before timm's schedules hold a LambdaLR's count
    model = torch.nn.Linear(2, 2)
    old = StepSchedule(OptimConfig(lr=0.1), torch.optim.SGD(model.parameters(), lr=0.1), 4, 5)
    old.load_state_dict({"last_epoch": 7, "base_lrs": [0.1]})
    assert old.steps == 7


def _one_step(cfg, tmp_path, name):
    trainer = build_trainer(cfg, registry(), tmp_path / name, show_progress=False)
    torch.manual_seed(0)
    stage = trainer.stages[0]
    trainer.step.begin(stage)
    x, y, idx = next(iter(trainer.data.train.epoch(0, 0, with_index=True)))
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    result = trainer.step(Batch(x, y, idx), When(stage, 0, 0.0))
    return trainer, before, result


def test_accumulation_equals_the_whole_batch_on_a_model_without_batch_norm(tmp_path):
    """A ViT student (LayerNorm only), in float64: two micro-batches of 16 make the step one batch of 32 makes."""
    settings = ["train.precision=fp64", "optim.name=adamw", "optim.lr=0.01"]
    whole, _, whole_result = _one_step(tiny_config(["kd"], *settings, pair="resnet->vit"), tmp_path, "whole")
    parts = tiny_config(["kd"], *settings, "train.accumulate=2", pair="resnet->vit")
    split, _, split_result = _one_step(parts, tmp_path, "split")
    for key, value in whole.student.state_dict().items():
        assert torch.allclose(value, split.student.state_dict()[key], rtol=0, atol=1e-10), key
    assert torch.allclose(whole_result.loss, split_result.loss, atol=1e-12)
    assert split_result.logits.shape[0] == 32


def test_clipping_bounds_the_applied_gradient(tmp_path):
    trainer, _, _ = _one_step(tiny_config(["kd"], "optim.clip_grad=0.001"), tmp_path, "clipped")
    grads = [p.grad for g in trainer.step.optimizer.param_groups for p in g["params"] if p.grad is not None]
    assert torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) <= 0.001 * 1.0001


def test_ema_best_and_all_of_it_resume_bit_exact(tmp_path):
    """With warmup, clipping, accumulation and the EMA on, a run killed mid-epoch and resumed is the run
    never killed; the best epoch's student and the EMA are kept, and `kdzoo eval --which` re-measures them."""
    recipe = [
        "train.epochs=3",
        "train.checkpoint_every=1",
        "train.ema=true",
        "train.ema_decay=0.5",
        "train.accumulate=2",
        "optim.warmup_epochs=1",
        "optim.clip_grad=1.0",
        "optim.name=adamw",
        "optim.lr=0.003",
        "optim.decay_norm_bias=false",
    ]
    cfg = tiny_config(["kd"], *recipe, out_dir=str(tmp_path))
    whole, resumed, state = whole_and_resumed_after_crash(cfg, tmp_path, calls=7)
    assert state.position.step > 0 and state.ema is not None and state.ema["updates"] > 0
    assert [r["val"] for r in whole.history] == [r["val"] for r in resumed.history]
    assert [r["val_ema"] for r in whole.history] == [r["val_ema"] for r in resumed.history]
    for key, value in whole.step.ema.module.state_dict().items():
        assert torch.equal(value, resumed.step.ema.module.state_dict()[key]), key

    run = tmp_path / "whole"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["student_best_epoch"] == 1 + max(range(3), key=lambda e: (whole.history[e]["val"]["top1"], -e))
    assert summary["student_ema_top1"] == whole.history[-1]["val_ema"]["top1"]
    for which, recorded in (("best", summary["student_best_top1"]), ("ema", summary["student_ema_top1"])):
        scored = CliRunner().invoke(main, ["eval", str(run), "--which", which])
        assert scored.exit_code == 0, scored.output
        assert f"top1={recorded:.2f}" in scored.output and f"student_{which}.safetensors" in scored.output


def test_which_without_the_file_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = CliRunner().invoke(main, ["eval", str(tmp_path), "--which", "ema"])
    assert result.exit_code != 0 and "has no student_ema.safetensors" in result.output
    assert "train.ema=true" in result.output and "Traceback" not in result.output
