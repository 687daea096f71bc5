"""Offline KD: teacher outputs cached once per sample (and view), reused without the teacher."""

import pytest
import torch

import kdzoo.engine.build
from kdzoo.api import Batch, When
from kdzoo.engine import build_trainer
from kdzoo.engine.extract import run_teacher
from kdzoo.errors import KdzooError
from kdzoo.registry import registry
from tests.helpers import tiny_config


def _trainer(tmp_path, *sets, method="fitnets", name="run"):
    cfg = tiny_config([method, "rkd"] if method == "fitnets" else [method], *sets, out_dir=str(tmp_path))
    return build_trainer(cfg, registry(), tmp_path / name, show_progress=True)


def test_cached_outputs_equal_live_ones_within_fp16(tmp_path, capsys):
    live = _trainer(tmp_path, "data.augment=false", name="live")
    cached = _trainer(tmp_path, "data.augment=false", "teacher.cache=true", name="cached")
    printed = capsys.readouterr()
    assert "teacher-output cache" in printed.out + printed.err and "MB" in printed.out + printed.err
    assert cached.teacher is None
    x, y, idx = next(cached.data.train.epoch(0, with_index=True))
    stored = cached.teacher_cache.lookup(idx, 0, torch.device("cpu"))
    fresh = run_teacher(live.objective.teacher_tap, x)
    assert torch.allclose(stored.logits, fresh.logits, rtol=2e-3, atol=2e-3)
    assert stored.features.keys() == fresh.features.keys() and stored.embedding is not None
    for i, feature in fresh.features.items():
        assert torch.allclose(stored.features[i], feature, rtol=2e-3, atol=2e-3)
    assert torch.allclose(stored.embedding, fresh.embedding, rtol=2e-3, atol=2e-3)
    stage = live.stages[0]
    live_terms = live.step.losses(Batch(x, y), When(stage)).terms
    cached_terms = cached.step.losses(Batch(x, y, teacher=stored), When(stage)).terms
    for name, value in live_terms.items():
        assert torch.allclose(value, cached_terms[name], rtol=1e-2, atol=1e-4), name


def test_warm_cache_never_builds_the_teacher(tmp_path, monkeypatch):
    first = _trainer(tmp_path, "data.augment=false", "teacher.cache=true", name="first")
    first.fit()

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was built although its outputs are cached")

    monkeypatch.setattr(kdzoo.engine.build, "obtain_teacher", no_teacher)
    second = _trainer(tmp_path, "data.augment=false", "teacher.cache=true", "fitnets.hint_weight=10", name="second")
    assert second.teacher is None and second.teacher_metrics == first.teacher_metrics
    summary = second.fit()
    assert summary["teacher"].endswith("(cached outputs)") and summary["teacher_top1"] is not None
    assert summary["teacher_source"] == "cached outputs"


def test_augmentation_without_fixed_views_is_refused(tmp_path):
    with pytest.raises(KdzooError, match="data.views=N"):
        _trainer(tmp_path, "teacher.cache=true")


def test_fixed_augmented_views_are_cached_per_view(tmp_path):
    trainer = _trainer(tmp_path, "teacher.cache=true", "data.views=2", method="kd")
    cache = trainer.teacher_cache
    assert cache.views == 2 and cache.arrays["logits"].shape[:2] == (2, trainer.data.train.num_samples)
    idx = torch.arange(8)
    view0, view1 = cache.lookup(idx, 0, torch.device("cpu")), cache.lookup(idx, 1, torch.device("cpu"))
    assert not torch.allclose(view0.logits, view1.logits)  # two different augmented views
    assert [trainer.data.train.view_of(epoch) for epoch in range(4)] == [0, 1, 0, 1]  # epoch e: view e % 2
    # the training batches of an epoch are exactly the cached views
    x, _, batch_idx = next(trainer.data.train.epoch(3, with_index=True))
    assert torch.equal(x, trainer.data.train.view(batch_idx, 1))
    trainer.fit()


def test_attention_transfer_caches_attention_maps_not_feature_maps(tmp_path):
    live = _trainer(tmp_path, "data.augment=false", method="at", name="live")
    cached = _trainer(tmp_path, "data.augment=false", "teacher.cache=true", method="at", name="cached")
    arrays = cached.teacher_cache.arrays
    assert not any(name.startswith("feature") for name in arrays)
    summaries = {name: a for name, a in arrays.items() if name.startswith("summary-")}
    assert summaries and all(a.shape[2] == 1 for a in summaries.values())  # (views, N, 1, H, W): C times smaller
    x, y, idx = next(cached.data.train.epoch(0, with_index=True))
    stored = cached.teacher_cache.lookup(idx, 0, torch.device("cpu"))
    stage = live.stages[0]
    live_terms = live.step.losses(Batch(x, y), When(stage)).terms
    cached_terms = cached.step.losses(Batch(x, y, teacher=stored), When(stage)).terms
    assert torch.allclose(live_terms["at"], cached_terms["at"], rtol=1e-2, atol=1e-6)


def _filled(tmp_path, name="first"):
    """A kd run's teacher-output cache, filled; returns the trainer and the entry's folder."""
    trainer = _trainer(tmp_path, "data.augment=false", "teacher.cache=true", method="kd", name=name)
    return trainer, trainer.teacher_cache.folder


@pytest.fixture(scope="module")
def filled_cache(tmp_path_factory):
    """A kdzoo cache holding a trained tiny teacher and its stored outputs, made once for the module."""
    import kdzoo.paths

    folder = tmp_path_factory.mktemp("filled")
    with kdzoo.paths.using_cache(folder / "cache"):
        _filled(folder)
    return folder / "cache"


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        pytest.param(lambda folder: (folder / "meta.json").write_text(""), "meta.json is damaged", id="empty-meta"),
        pytest.param(lambda folder: (folder / "meta.json").write_text('{"complete": tru'), "damaged", id="cut-meta"),
        pytest.param(
            lambda folder: next(folder.glob("logits*.f16")).write_bytes(b"\0" * 10), "is 10 bytes", id="short-array"
        ),
        pytest.param(lambda folder: next(folder.glob("logits*.f16")).unlink(), "is missing", id="missing-array"),
        # the teacher's description and accuracy: written again by the teacher, the outputs kept
        pytest.param(lambda folder: (folder.parent / "info.json").write_text("{"), None, id="cut-info"),
    ],
)
def test_a_damaged_entry_is_filled_again_saying_so_never_reused(tmp_path, capsys, damage, said, filled_cache):
    import shutil

    shutil.copytree(filled_cache, tmp_path / "cache")  # this test's own copy, to damage
    first, folder = _filled(tmp_path)
    expected = first.teacher_cache.lookup(torch.arange(8), 0, torch.device("cpu")).logits
    damage(folder)
    capsys.readouterr()
    again = _trainer(tmp_path, "data.augment=false", "teacher.cache=true", method="kd", name="again")
    printed = capsys.readouterr().out
    if said is not None:
        assert said in printed and "filling it again" in printed
    stored = again.teacher_cache.lookup(torch.arange(8), 0, torch.device("cpu")).logits
    assert torch.equal(stored, expected)  # the same teacher's outputs, rebuilt
    assert again.teacher_metrics == first.teacher_metrics
    assert again.fit()["teacher_top1"] == first.teacher_metrics["top1"]


def test_a_full_disk_while_filling_is_one_line_naming_the_file_and_the_bytes(tmp_path, monkeypatch):
    import errno
    import os

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(KdzooError, match=r"no space left for .*logits-\w+\.f16: it needs [\d,]+ bytes; nothing was"):
        _filled(tmp_path)
    assert not list((tmp_path / "cache").rglob("meta.json"))  # nothing half-made is taken for an entry


def test_a_fill_that_would_not_fit_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    real = shutil.disk_usage
    # a disk with room for the teacher's training and the entry's small records (key.json, info.json: ~1 KB
    # each), not for its outputs (feature maps: tens of KB)
    full = lambda path: usage(*real(path)[:2], 4000) if "teacher_outputs" in str(path) else real(path)  # noqa: E731
    monkeypatch.setattr(shutil, "disk_usage", full)
    with pytest.raises(KdzooError, match=r"no space left for .*meta.json: it needs [\d,]+ bytes, 4,000 are free"):
        _trainer(tmp_path, "data.augment=false", "teacher.cache=true")  # fitnets + rkd: their feature maps too
