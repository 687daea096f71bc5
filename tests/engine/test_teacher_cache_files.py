"""The teacher run once for file-backed data (issue 32, item 3): an image folder with data.views=K fixed
augmented crops per sample (RandAugment on) and teacher.cache: the crops' teacher outputs are stored once;
the next epochs run no teacher forward at all, and the run equals one whose teacher computes the same crops
live (the same crops' outputs, to the cache's float16)."""

import numpy as np
import pytest
import torch

from kdzoo.config import load_config
from kdzoo.engine import build_trainer
from kdzoo.engine.extract import FeatureExtractor
from kdzoo.registry import registry
from tests.helpers import coloured_image, teacher_weights


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cached-crops")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for label in range(3):
            (root / "images" / split / f"c{label}").mkdir(parents=True)
            for i in range(count):
                coloured_image(label, rng, (28, 30), 40).save(root / "images" / split / f"c{label}" / f"{i}.png")
    teacher_weights(root / "teacher.safetensors", 3)
    return root


def _trainer(folder, tmp_path, name, *extra):
    sets = [
        "data.name=imagefolder",
        f"data.root={folder / 'images'}",
        "data.img_size=24",
        "data.batch_size=4",
        "data.num_workers=1",
        "data.views=2",
        "data.auto_augment=rand-m9-mstd0.5",
        "teacher.model=test_resnet",
        f"teacher.checkpoint={folder / 'teacher.safetensors'}",
        "student.model=test_resnet",
        "train.epochs=3",
        "train.precision=fp64",
        *extra,
    ]
    config = load_config([], sets, ["kd"], registry().config_classes())
    return build_trainer(config, registry(), tmp_path / name, show_progress=False)


def test_stored_crops_mean_no_teacher_forward_and_the_live_run_s_results(folder, tmp_path, monkeypatch):
    live = _trainer(folder, tmp_path, "live")
    live.fit()

    cached = _trainer(folder, tmp_path, "cached", "teacher.cache=true")  # the fill happens here
    assert cached.teacher is None and cached.teacher_cache.views == 2
    forwards = []
    original = FeatureExtractor.__call__
    monkeypatch.setattr(FeatureExtractor, "__call__", lambda self, x: forwards.append(self) or original(self, x))
    cached.fit()
    teacher_forwards = [tap for tap in forwards if tap is not cached.objective.student_tap]
    assert teacher_forwards == []  # epochs 1-3 read the stored crops' outputs
    assert all(np.isfinite(r["train"]["loss"]) for r in cached.history)
    # what it read: the live teacher's outputs of the same crops (view e % 2 in epoch e), to float16's rounding
    for epoch in (0, 1, 2):
        x, _, idx = next(iter(cached.data.train.epoch(epoch, with_index=True)))
        stored = cached.teacher_cache.lookup(idx, cached.data.train.view_of(epoch), torch.device("cpu"))
        with torch.inference_mode():
            fresh = live.objective.teacher_tap(x.double())
        assert torch.allclose(stored.logits.double(), fresh.logits, rtol=2e-3, atol=2e-3), epoch
