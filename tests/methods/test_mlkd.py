"""Several views of each image in one step (issue 14) and MLKD on top: the stack of views, who sees
which rows, the cache refusal, bit-exact resume; MLKD's terms by hand from the authors' code."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import kdzoo
from kdzoo import INPUT_VIEW, KdzooError, View
from kdzoo.engine import build_trainer
from kdzoo.losses.mlkd import batch_level_loss, class_level_loss, confidence_fractions
from kdzoo.registry import registry
from kdzoo.toolkit import cutout, rand_augment, rotation
from kdzoo_plugins.mlkd import MLKDConfig, MultiLevelKD
from tests.helpers import registry_with_method, tiny_config, whole_and_resumed_after_crash


def _softmax(z, t):
    e = np.exp((z - z.max(1, keepdims=True)) / t)
    return e / e.sum(1, keepdims=True)


def _logits(seed, b=6, c=5):
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(b, c, generator=g, dtype=torch.float64), 3 * torch.randn(
        b, c, generator=g, dtype=torch.float64
    )


def test_batch_and_class_level_terms_by_hand():
    s, t = _logits(0)
    for temp in (1.0, 4.0):
        ps, pt = _softmax(s.numpy(), temp), _softmax(t.numpy(), temp)
        b, c = ps.shape
        batch = sum((pt[i] @ pt[j] - ps[i] @ ps[j]) ** 2 for i in range(b) for j in range(b)) / b
        klass = sum((pt[:, i] @ pt[:, j] - ps[:, i] @ ps[:, j]) ** 2 for i in range(c) for j in range(c)) / c
        assert batch_level_loss(s, t, temp).item() == pytest.approx(batch, rel=1e-5)
        assert class_level_loss(s, t, temp).item() == pytest.approx(klass, rel=1e-5)


def _kd(s, t, temp):
    ps, pt = _softmax(s, temp), _softmax(t, temp)
    return (pt * (np.log(pt) - np.log(ps))).sum(1).mean() * temp**2


def test_the_methods_terms_equal_the_authors_code_by_hand():
    s_w, t_w = (z.float() for z in _logits(1))
    s_s, t_s = (z.float() for z in _logits(2))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    student = kdzoo.Outputs(torch.cat([s_w, s_s]))
    teacher = kdzoo.Outputs(torch.cat([t_w, t_s]))
    views = {INPUT_VIEW: slice(0, 6), "strong": slice(6, 12)}
    terms = MultiLevelKD(MLKDConfig()).kdzoo_compute_losses(student, teacher, y, views)
    sw, tw, ss, ts = (z.double().numpy() for z in (s_w, t_w, s_s, t_s))
    # the authors' masks: np.percentile (linear) of the teacher's weak-view confidences, then (scalar * mask).mean()
    p_t = _softmax(tw, 1.0)
    conf, class_conf = p_t.max(1), p_t.sum(0)
    m, mc = (conf <= np.percentile(conf, 50)).mean(), (class_conf <= np.percentile(class_conf, 50)).mean()
    temps = [4.0, 3.0, 5.0, 2.0, 6.0]
    weak = sum(_kd(sw, tw, t) * m for t in temps)
    strong = _kd(ss, ts, 4) + _kd(ss, ts, 3) + _kd(ss, ts, 5) + _kd(sw, tw, 2) + _kd(sw, tw, 6)
    assert terms["mlkd_instance"].item() == pytest.approx(weak + strong, rel=1e-5)
    assert terms["mlkd_batch"].item() == pytest.approx(
        m * sum(batch_level_loss(s_w.double(), t_w.double(), t).item() for t in temps), rel=1e-5
    )
    assert terms["mlkd_class"].item() == pytest.approx(
        mc * sum(class_level_loss(s_w.double(), t_w.double(), t).item() for t in temps), rel=1e-5
    )
    ce = -np.log(_softmax(ss, 1.0)[np.arange(6), y.numpy()]).mean()
    assert terms["mlkd_ce_strong"].item() == pytest.approx(ce, rel=1e-5)
    assert [f.item() for f in confidence_fractions(t_w)] == pytest.approx([m, mc])


class _SeesRows:
    """A method asking for no views: records what it is given."""

    def __init__(self, config):
        self.seen = {}

    @kdzoo.hookimpl
    def kdzoo_compute_losses(self, student, teacher, views):
        self.seen = {"student": student.logits.shape[0], "teacher": teacher.logits.shape[0], "views": views}
        return {"rows": student.logits.sum() * 0}


def test_views_are_stacked_after_the_batch_and_only_the_methods_asking_see_them(monkeypatch):
    monkeypatch.setattr(kdzoo.registry, "_registry", registry_with_method("rows", _SeesRows))
    torch.manual_seed(0)
    teacher, student = timm.create_model("resnet10t", num_classes=5), timm.create_model("test_resnet", num_classes=5)
    objective = kdzoo.get_method(["mlkd", "rows"], teacher=teacher, student=student, img_size=32)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    stacked, rows = objective.stack_views(x)
    assert stacked.shape[0] == 8 and rows == {INPUT_VIEW: slice(0, 4), "strong": slice(4, 8)}
    assert torch.equal(stacked[:4], x) and not torch.equal(stacked[4:], x)
    result = objective.loss(kdzoo.Batch(x, y))
    seen = objective.methods["rows"].seen
    assert seen == {"student": 4, "teacher": 4, "views": {INPUT_VIEW: slice(0, 4)}}
    assert result.logits.shape == (4, 5)  # the input's rows, not its views'


def test_a_view_method_refuses_the_teacher_output_cache_in_one_line(tmp_path):
    cfg = tiny_config(["mlkd"], "teacher.cache=true", "data.augment=false", out_dir=str(tmp_path))
    with pytest.raises(KdzooError, match=r"views of each image .* set teacher.cache=false") as error:
        build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    assert "\n" not in str(error.value)


def test_a_view_named_input_is_refused(monkeypatch):
    class Bad:
        def __init__(self, config):
            pass

        @kdzoo.hookimpl
        def kdzoo_views(self):
            return [View(INPUT_VIEW, lambda x: x)]

    monkeypatch.setattr(kdzoo.registry, "_registry", registry_with_method("bad", Bad))
    teacher, student = timm.create_model("resnet10t", num_classes=5), timm.create_model("test_resnet", num_classes=5)
    with pytest.raises(KdzooError, match="is the batch itself"):
        kdzoo.get_method("bad", teacher=teacher, student=student, img_size=32)


def test_a_run_on_views_killed_mid_epoch_resumes_bit_exactly(tmp_path):
    cfg = tiny_config(["mlkd"], "train.epochs=2", "train.checkpoint_every=1", out_dir=str(tmp_path))
    whole, resumed, _ = whole_and_resumed_after_crash(cfg, tmp_path, calls=4)
    for name, value in whole.student.state_dict().items():
        assert torch.equal(value, resumed.student.state_dict()[name]), name


def test_strong_augmentation_and_rotations():
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    a = rand_augment(x)
    torch.manual_seed(1)
    assert torch.equal(rand_augment(x), a) and a.shape == x.shape  # drawn from the global RNG only
    assert not torch.equal(a, x) and torch.isfinite(a).all()
    assert torch.equal(rotation(1)(x), torch.from_numpy(np.rot90(x.numpy(), 1, axes=(2, 3)).copy()))
    assert torch.equal(rotation(4)(x), x)
    cut = cutout(torch.ones(64, 1, 8, 8), torch.tensor([0.5] * 32 + [0.0] * 32))
    zeros = cut.eq(0).sum(dim=(1, 2, 3))
    assert zeros[:32].max() == 16 and zeros[:32].min() >= 4 and zeros[32:].max() == 0  # 4 x 4, clipped at borders


def test_mlkd_trains_at_half_the_runs_rate_as_its_authors_do(tmp_path):
    """The authors' CIFAR-100 configs: 0.025 where the baselines train at 0.05 (``lr_scale``)."""
    for extra, expected in (((), 0.025), (("mlkd.lr_scale=1",), 0.05)):
        cfg = tiny_config(["mlkd"], "optim.lr=0.05", *extra, out_dir=str(tmp_path))
        trainer = build_trainer(cfg, registry(), tmp_path / f"run{expected}", show_progress=False)
        (stage,) = trainer.stages
        trainer.step.begin(stage)
        assert trainer.step.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
