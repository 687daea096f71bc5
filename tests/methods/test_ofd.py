"""OFD: the margin and the paper's partial L2 by hand, and the pre-activation maps from a teacher-output
cache equal to the live teacher's."""

import pytest
import torch

from kdzoo.api import Batch, When
from kdzoo.losses.ofd import negative_margin, ofd_loss, partial_l2


def test_ofd_margin_and_partial_l2_by_hand():
    t = torch.tensor([[[[-1.0, -3.0], [2.0, 0.5]]]])  # (1, 1, 2, 2): E[t | t < 0] = -2
    assert negative_margin(t).tolist() == [-2.0]
    margin = torch.tensor([-2.0])
    s = torch.tensor([[[[-3.0, -1.0], [1.0, 0.5]]]])
    # targets max(t, -2) = [-1, -2, 2, 0.5]; (s - t')^2 where s > t' or t' > 0:
    # [-3 vs -1: skipped (s below an off target)], [-1 vs -2: s > t' -> 1], [1 vs 2: 1], [0.5 vs 0.5: 0]
    assert partial_l2(s, t, margin).item() == pytest.approx(2.0)
    assert ofd_loss([s, s], [t, t], [margin, margin]).item() == pytest.approx((2.0 / 2 + 2.0) / 1)


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
