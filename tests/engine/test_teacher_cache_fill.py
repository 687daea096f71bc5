"""Filling the teacher-output cache (issue 32, item 3): the size it takes is said before anything is
written and is what the files take; a fill killed part-way goes on from its last progress record, computing
only the batches after it, and ends with what an uninterrupted fill stores."""

import re

import numpy as np
import pytest

import kdzoo.engine.teacher_cache as teacher_cache
from kdzoo.engine import build_trainer
from kdzoo.errors import KdzooError
from kdzoo.paths import using_cache
from kdzoo.registry import registry
from tests.helpers import tiny_config

SETS = ("teacher.cache=true", "data.augment=false", "data.eval_batch_size=8")  # 64 samples: 8 batches


class _Stop(Exception):
    pass


def _build(tmp_path, name):
    return build_trainer(tiny_config(["kd"], *SETS, out_dir=str(tmp_path)), registry(), tmp_path / name)


def test_a_killed_fill_goes_on_where_it_stopped_and_the_size_is_said_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(teacher_cache, "FILL_RECORD_S", 0.0)  # a progress record after every batch
    named = teacher_cache.TeacherOutputCache._named
    calls = []

    def counting(out, topk=None, stop_at=None):
        calls.append(1)
        if stop_at is not None and len(calls) == stop_at:
            raise _Stop  # the process dies here: batches 1-3 are on disk and recorded
        return named(out, topk)

    monkeypatch.setattr(teacher_cache.TeacherOutputCache, "_named", staticmethod(lambda o, k=None: counting(o, k, 4)))
    with pytest.raises((_Stop, KdzooError)):
        _build(tmp_path, "killed")
    assert len(calls) == 4
    calls.clear()
    monkeypatch.setattr(teacher_cache.TeacherOutputCache, "_named", staticmethod(lambda o, k=None: counting(o, k)))
    resumed = _build(tmp_path, "resumed")
    assert len(calls) == 8 - 3  # the batches after the last record only
    said = capsys.readouterr()
    text = said.out + said.err
    assert "going on with the fill at batch 4 of 8" in text
    estimate = int(re.search(r"64 samples x 1 view\(s\) take ([0-9,]+) bytes", text).group(1).replace(",", ""))
    on_disk = sum(p.stat().st_size for p in resumed.teacher_cache.folder.glob("*.f16"))
    assert estimate == pytest.approx(on_disk, rel=0.05)
    assert not (resumed.teacher_cache.folder / teacher_cache.FILL_PROGRESS).exists()

    with using_cache(tmp_path / "another-cache"):
        whole = _build(tmp_path, "whole")
    for name, array in whole.teacher_cache.arrays.items():
        assert np.array_equal(np.asarray(array), np.asarray(resumed.teacher_cache.arrays[name])), name
