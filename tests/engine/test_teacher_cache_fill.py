"""Filling the teacher-output cache (issue 32, item 3): the size it takes is said before anything is
written and is what the files take; a fill killed part-way goes on from its last progress record, computing
only the batches not done, and ends with what an uninterrupted fill stores; under torchrun the processes
sharing the cache fill it together, each its share, storing what one process stores."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kdzoo.engine.teacher_cache as teacher_cache
from kdzoo.engine import build_trainer
from kdzoo.errors import KdzooError
from kdzoo.paths import using_cache
from kdzoo.registry import registry
from tests.helpers import TORCHRUN_TWO, subprocess_env, teacher_weights, tiny_config

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
    assert "going on with the fill, 3 of 8 batches done" in text
    estimate = int(re.search(r"64 samples x 1 view\(s\) take ([0-9,]+) bytes", text).group(1).replace(",", ""))
    on_disk = sum(p.stat().st_size for p in resumed.teacher_cache.folder.glob("*.f16"))
    assert estimate == pytest.approx(on_disk, rel=0.05)
    assert not (resumed.teacher_cache.folder / teacher_cache.FILL_PROGRESS).exists()

    with using_cache(tmp_path / "another-cache"):
        whole = _build(tmp_path, "whole")
    for name, array in whole.teacher_cache.arrays.items():
        assert np.array_equal(np.asarray(array), np.asarray(resumed.teacher_cache.arrays[name])), name


def test_a_fill_another_process_left_part_done_is_finished_with_the_batches_not_done(tmp_path, monkeypatch):
    """The record marks batches, not a prefix: of two processes filling together, one did its share and
    the other was killed before its own; a later fill, on one process, computes exactly the batches not
    done and stores what an uninterrupted fill stores."""
    cache_class = teacher_cache.TeacherOutputCache
    named, calls = cache_class._named, []

    def counting(out, topk=None):
        calls.append(1)
        return named(out, topk)

    def killed_after_the_other_process_did_its_share(self, extractor, batch_size, device, say=lambda _t: None):
        self.begin_fill(extractor, batch_size, device, say)
        self.fill_share(extractor, batch_size, device, self.batches_to_do(batch_size)[1::2])
        raise _Stop

    monkeypatch.setattr(cache_class, "_named", staticmethod(counting))
    with monkeypatch.context() as patched:
        patched.setattr(cache_class, "fill", killed_after_the_other_process_did_its_share)
        with pytest.raises((_Stop, KdzooError)):
            _build(tmp_path, "killed")
    assert len(calls) == 1 + 3  # the first batch (it gives the shapes), then every second of the 7 others
    calls.clear()
    resumed = _build(tmp_path, "resumed")
    assert len(calls) == 8 - 4
    with using_cache(tmp_path / "another-cache"):
        whole = _build(tmp_path, "whole")
    for name, array in whole.teacher_cache.arrays.items():
        assert np.array_equal(np.asarray(array), np.asarray(resumed.teacher_cache.arrays[name])), name


def test_processes_sharing_a_cache_fill_it_together_and_store_what_one_process_stores(tmp_path):
    """2 gloo processes (one cache folder) each compute part of the fill's 8 batches, none twice; the
    entry holds, byte for byte, what one process's fill stores in a cache of its own."""
    teacher = teacher_weights(tmp_path / "teacher.safetensors", 10)  # synthetic data: 10 classes
    sets = [
        "data.name=synthetic",
        "data.img_size=32",
        "data.batch_size=32",
        "data.train_limit=64",
        "data.eval_batch_size=8",
        "data.augment=false",
        "teacher.model=test_resnet",
        f"teacher.checkpoint={teacher}",
        "student.model=test_resnet",
        "teacher.cache=true",
    ]
    worker = Path(__file__).with_name("cache_fill_worker.py")
    env = {**subprocess_env(tmp_path), "PYTHONPATH": str(Path(__file__).parents[2])}
    running = {}
    for out, launcher in (("one", []), ("two", TORCHRUN_TWO)):
        command = [sys.executable, *launcher, str(worker), str(tmp_path / out), "--", *sets]
        running[out] = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for out, process in running.items():
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"{out}: {output[-4000:]}"
    counts = [int((tmp_path / "two" / f"batches-rank{rank}.txt").read_text()) for rank in (0, 1)]
    assert sum(counts) == 8 and min(counts) >= 3, counts  # every batch once, split between the two
    assert int((tmp_path / "one" / "batches-rank0.txt").read_text()) == 8
    entries = {out: sorted((tmp_path / out / "cache").glob("teacher_outputs/*/taps-*")) for out in ("one", "two")}
    assert len(entries["one"]) == len(entries["two"]) == 1
    one, two = entries["one"][0], entries["two"][0]
    meta_one, meta_two = (json.loads((entry / "meta.json").read_text()) for entry in (one, two))
    assert meta_one["shapes"] == meta_two["shapes"] and meta_one["complete"] and meta_two["complete"]
    for name in meta_one["shapes"]:
        assert (one / meta_one["files"][name]).read_bytes() == (two / meta_two["files"][name]).read_bytes(), name
    assert not list(two.glob("*.u8")) and not (two / teacher_cache.FILL_PROGRESS).exists()
