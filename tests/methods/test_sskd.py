"""SSKD (issue 14, views): the head's task and the student's three terms equal torchdistill's
AuxSSKDLoss / SSKDLoss on the same tensors; the plugin's stacked views give the same terms as
torchdistill's interleaved batch; the two stages train what they should."""

from __future__ import annotations

import pytest
import timm
import torch

import kdzoo
from kdzoo import INPUT_VIEW
from kdzoo.engine import build_trainer
from kdzoo.losses.sskd import contrastive_prediction_loss, kept_rows, sskd_terms
from kdzoo.registry import registry
from kdzoo_plugins.sskd import SelfSupervisedKD, SSKDConfig
from tests.helpers import tiny_config

B, C, D = 8, 10, 6


def _interleaved(seed: int):
    """torchdistill's layout: [x0, x0 rot90, x0 rot180, x0 rot270, x1, ...] (4B rows)."""
    g = torch.Generator().manual_seed(seed)
    logits_s, logits_t = (3 * torch.randn(4 * B, C, generator=g) for _ in range(2))
    reps_s, reps_t = (torch.randn(4 * B, D, generator=g) for _ in range(2))
    targets = torch.randint(0, C, (B,), generator=g)
    return logits_s, logits_t, reps_s, reps_t, targets


def _td_loss(weights, ss_ratio=0.75, tf_ratio=1.0):
    from torchdistill.losses.mid_level import SSKDLoss

    return SSKDLoss("s", "t", "ss_s", "ss_t", kl_temp=4.0, ss_temp=0.5, tf_temp=4.0, ss_ratio=ss_ratio,
                    tf_ratio=tf_ratio, loss_weights=weights)  # fmt: skip


def _ours(logits_s, logits_t, reps_s, reps_t, targets, ss_ratio=0.75, tf_ratio=1.0):
    normal = torch.arange(4 * B) % 4 == 0
    source = torch.arange(B).repeat_interleave(3)
    return sskd_terms(
        (logits_s[normal], logits_s[~normal]),
        (logits_t[normal], logits_t[~normal]),
        (reps_s[normal], reps_s[~normal]),
        (reps_t[normal], reps_t[~normal]),
        targets,
        source,
        (4.0, 4.0, 0.5),
        (tf_ratio, ss_ratio),
    )


@pytest.fixture
def stable_argsort(monkeypatch):
    """torchdistill keeps "the best-ranked fraction" of the rows through an unstable argsort, so which of
    the rows tied at the cut it keeps is unspecified; kdzoo keeps them in row order. Compared with the
    same (stable) tie order, the selections and the terms are equal."""
    argsort = torch.argsort
    monkeypatch.setattr(torch, "argsort", lambda *args, **kwargs: argsort(*args, **{**kwargs, "stable": True}))


@pytest.mark.parametrize("seed", range(5))
def test_the_student_terms_equal_torchdistills_sskdloss(seed, stable_argsort):
    logits_s, logits_t, reps_s, reps_t, targets = _interleaved(seed)
    ours = _ours(logits_s, logits_t, reps_s, reps_t, targets)
    io_s = {"s": {"output": logits_s}, "ss_s": {"output": reps_s}}
    io_t = {"t": {"output": logits_t}, "ss_t": {"output": reps_t}}
    # torchdistill's weights order: [ce, kl, ss, tf]
    for name, weights in {"unrotated": [0, 1, 0, 0], "similarity": [0, 0, 1, 0], "rotated": [0, 0, 0, 1]}.items():
        theirs = _td_loss(weights)(io_s, io_t, targets)
        torch.testing.assert_close(ours[name], theirs, rtol=1e-5, atol=1e-7, msg=name)


def test_the_heads_task_equals_torchdistills_auxsskdloss():
    from torchdistill.losses.mid_level import AuxSSKDLoss

    _, _, _, reps_t, _ = _interleaved(7)
    normal = torch.arange(4 * B) % 4 == 0
    ours = contrastive_prediction_loss(reps_t[~normal], reps_t[normal], torch.arange(B).repeat_interleave(3))
    torch.testing.assert_close(ours, AuxSSKDLoss()({}, {"ss_module": {"output": reps_t}}), rtol=1e-6, atol=0)


def test_kept_rows_are_the_right_ones_and_the_best_ranked_fraction_of_the_others():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.2, 0.5, 0.3], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    target = torch.tensor([0, 0, 0, 2, 0])  # ranks 0, 1, 2, 2, 2
    assert kept_rows(scores, target, 1.0).tolist() == [0, 1, 2, 3, 4]
    assert kept_rows(scores, target, 0.5).tolist() == [0, 1, 2]  # right: row 0; then 2 of 4: rank 1, first rank 2
    assert kept_rows(scores, target, 0.0).tolist() == [0]


def test_the_plugins_stacked_views_give_torchdistills_terms():
    """The plugin stacks views (all unrotated, all rot90, ...); torchdistill interleaves them per image."""
    logits_s, logits_t, reps_s, reps_t, targets = _interleaved(3)
    stacked = torch.cat([torch.arange(k, 4 * B, 4) for k in range(4)])  # interleaved rows in stacked order
    method = SelfSupervisedKD(SSKDConfig(ss_ratio=1.0))
    heads = {"student_head": torch.nn.Identity(), "teacher_head": torch.nn.Identity()}
    views = {INPUT_VIEW: slice(0, B), **{f"rotate{90 * k}": slice(k * B, (k + 1) * B) for k in (1, 2, 3)}}
    stage = kdzoo.Stage("distill", 1, losses=frozenset({"ce", "sskd_kd", "sskd_tf", "sskd_ss"}))
    terms = method.kdzoo_compute_losses(
        kdzoo.Outputs(logits_s[stacked], embedding=reps_s[stacked]),
        kdzoo.Outputs(logits_t[stacked], embedding=reps_t[stacked]),
        targets,
        stage,
        views,
        heads,
    )
    io_s = {"s": {"output": logits_s}, "ss_s": {"output": reps_s}}
    io_t = {"t": {"output": logits_t}, "ss_t": {"output": reps_t}}
    for name, weights in {"sskd_kd": [0, 1, 0, 0], "sskd_ss": [0, 0, 1, 0], "sskd_tf": [0, 0, 0, 1]}.items():
        theirs = _td_loss(weights, ss_ratio=1.0)(io_s, io_t, targets)
        torch.testing.assert_close(terms[name], theirs, rtol=1e-5, atol=1e-7, msg=name)


def test_the_head_stage_trains_the_teacher_head_alone_then_the_student_learns(tmp_path):
    cfg = tiny_config(["sskd"], "sskd.head_epochs=1", "train.epochs=1", out_dir=str(tmp_path))
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    assert [s.name for s in trainer.stages] == ["teacher_head", "distill"]
    head = {k: v.clone() for k, v in trainer.modules["sskd"]["teacher_head"].state_dict().items()}
    student = {k: v.clone() for k, v in trainer.student.state_dict().items() if v.is_floating_point()}
    trainer.step.begin(trainer.stages[0])
    assert trainer.step.optimizer.param_groups[0]["lr"] == 0.05
    trainer.fit()
    first, second = trainer.history
    assert set(first["train"]) - {"weights", "images_per_s", "loss"} == {"sskd_aux"}
    assert set(second["train"]) - {"weights", "images_per_s", "loss"} == {"ce", "sskd_kd", "sskd_tf", "sskd_ss"}
    trained = trainer.modules["sskd"]["teacher_head"].state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in head.items())
    after = trainer.student.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in student.items())


def test_through_the_library_both_tasks_train_together():
    torch.manual_seed(0)
    teacher, student = timm.create_model("resnet10t", num_classes=5), timm.create_model("test_resnet", num_classes=5)
    objective = kdzoo.get_method("sskd", teacher=teacher, student=student, img_size=32)
    result = objective.loss(kdzoo.Batch(torch.randn(4, 3, 32, 32), torch.arange(4)))
    result.loss.backward()
    assert set(result.terms) == {"ce", "sskd_aux", "sskd_kd", "sskd_tf", "sskd_ss"}
