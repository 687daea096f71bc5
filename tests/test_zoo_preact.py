"""Pre-activation taps (a general tap kind) and the methods on them, AB and OFD: equal to
torchdistill's AB and to the OFD paper's partial L2 by hand."""

import pytest
import timm
import torch
import torchdistill.losses.mid_level as td

from kdzoo.api import Batch, When
from kdzoo.engine.extract import FeatureExtractor, describe
from kdzoo.losses.ab import ab_loss, boundary_loss
from kdzoo.losses.ofd import negative_margin, ofd_loss, partial_l2


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name, kwargs", [("resnet10t", {}), ("test_vit", {"img_size": 32, "patch_size": 4})])
def test_pre_activation_is_the_input_of_the_stages_last_activation(name, kwargs):
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    info = describe(model, name, 32)
    stages = list(range(len(info.stages)))
    extractor = FeatureExtractor(model, info, stages, False, preact=stages)
    with torch.no_grad():
        out = extractor(torch.randn(2, 3, 32, 32, generator=_gen(0)))
    for i in stages:
        pre, post = out.preact[i], out.features[i]
        if name == "resnet10t":  # every stage ends in a ReLU: post = relu(pre), and pre has negatives
            assert torch.allclose(post, pre.relu()), i
            assert i == 1 or pre.min() < 0, i  # layer1's blocks start with zero-initialised last BNs
        else:  # transformer blocks end in a residual sum: no final activation, the map itself
            assert torch.equal(pre, post), i
    extractor.close()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_ab_equals_torchdistill_with_the_depth_weights():
    s = [torch.randn(4, 8, 4, 4, generator=_gen(1)), torch.randn(4, 16, 2, 2, generator=_gen(2))]
    t = [torch.randn(4, 8, 4, 4, generator=_gen(3)), torch.randn(4, 16, 2, 2, generator=_gen(4))]
    pairs = {
        f"p{i}": {
            "student": {"io": "output", "path": f"s{i}"},
            "teacher": {"io": "output", "path": f"t{i}"},
            "weight": w,
        }
        for i, w in enumerate([0.5, 1.0])  # 2^(i - n + 1)
    }
    theirs = td.AltActTransferLoss(pairs, margin=1.0, reduction="mean")(
        {f"s{i}": {"output": x} for i, x in enumerate(s)}, {f"t{i}": {"output": x} for i, x in enumerate(t)}
    )
    assert ab_loss(s, t, 1.0).item() == pytest.approx(theirs.item(), rel=1e-5)
    # by hand on one element: teacher on (t > 0), student at 0.5 < margin 1: (0.5 - 1)^2
    assert boundary_loss(torch.tensor([0.5]), torch.tensor([2.0])).item() == pytest.approx(0.25)
    assert boundary_loss(torch.tensor([-2.0]), torch.tensor([-1.0])).item() == 0.0  # off and below -m: no cost


def test_ofd_margin_and_partial_l2_by_hand():
    t = torch.tensor([[[[-1.0, -3.0], [2.0, 0.5]]]])  # (1, 1, 2, 2): E[t | t < 0] = -2
    assert negative_margin(t).tolist() == [-2.0]
    margin = torch.tensor([-2.0])
    s = torch.tensor([[[[-3.0, -1.0], [1.0, 0.5]]]])
    # targets max(t, -2) = [-1, -2, 2, 0.5]; (s - t')^2 where s > t' or t' > 0:
    # [-3 vs -1: skipped (s below an off target)], [-1 vs -2: s > t' -> 1], [1 vs 2: 1], [0.5 vs 0.5: 0]
    assert partial_l2(s, t, margin).item() == pytest.approx(2.0)
    assert ofd_loss([s, s], [t, t], [margin, margin]).item() == pytest.approx((2.0 / 2 + 2.0) / 1)


def test_a_preact_tap_is_a_one_line_error_when_undeclared():
    from kdzoo import KdzooError, Outputs

    with pytest.raises(KdzooError, match="pre-activation map of stage 2 was not tapped"):
        Outputs(torch.zeros(1, 2)).pre_activation(2)


def test_ofd_from_a_teacher_output_cache_equals_the_live_teacher(tmp_path):
    from kdzoo.engine import build_trainer
    from kdzoo.registry import registry
    from tests.helpers import tiny_config

    live = build_trainer(tiny_config(["ofd"], "data.augment=false", out_dir=str(tmp_path)), registry(), tmp_path / "a")
    cfg = tiny_config(["ofd"], "data.augment=false", "teacher.cache=true", out_dir=str(tmp_path))
    cached = build_trainer(cfg, registry(), tmp_path / "b", show_progress=False)
    assert any(name.startswith("preact") for name in cached.teacher_cache.arrays)  # pre-activation maps cached
    x, y, idx = next(cached.data.train.epoch(0, with_index=True))
    stored = cached.teacher_cache.lookup(idx, 0, torch.device("cpu"))
    stage = live.stages[0]
    live_terms = live.step.losses(Batch(x, y), When(stage)).terms
    cached_terms = cached.step.losses(Batch(x, y, teacher=stored), When(stage)).terms
    assert torch.allclose(live_terms["ofd"], cached_terms["ofd"], rtol=1e-2)


def test_factor_transfer_equals_torchdistill_and_pretrains_its_paraphraser_alone(tmp_path):
    from kdzoo.engine import build_trainer
    from kdzoo.losses.ft import factor_loss
    from kdzoo.registry import registry
    from tests.helpers import tiny_config

    f_s, f_t = torch.randn(4, 8, 2, 2, generator=_gen(20)), torch.randn(4, 8, 2, 2, generator=_gen(21))
    theirs = td.FTLoss(p=1, reduction="mean")({"translator": {"output": f_s}}, {"paraphraser": {"output": f_t}})
    assert factor_loss(f_s, f_t).item() == pytest.approx(theirs.item(), rel=1e-5)

    cfg = tiny_config(["ft"], "ft.paraphrase_epochs=1", out_dir=str(tmp_path))
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    assert [s.name for s in trainer.stages] == ["paraphrase", "train"]
    student_before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    paraphraser = trainer.modules["ft"]["paraphraser"]
    after_paraphrase = {}

    class AfterFirstStage:
        @__import__("kdzoo").hookimpl
        def kdzoo_on_stage_end(self, run, index):
            if index == 0:
                after_paraphrase.update({k: v.clone() for k, v in run.student.state_dict().items()})

    trainer.pm.register(AfterFirstStage())
    paraphraser_before = {k: v.clone() for k, v in paraphraser.state_dict().items()}
    trainer.fit()
    weights = [k for k in student_before if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(student_before[k], after_paraphrase[k]) for k in weights)  # the student waited
    assert any(not torch.equal(v, paraphraser.state_dict()[k]) for k, v in paraphraser_before.items())
    assert {"ft_reconstruction"} <= set(trainer.history[0]["train"]) and "ft" in trainer.history[1]["train"]
