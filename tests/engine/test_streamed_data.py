"""Streamed datasets (issue 32 item 1): webdataset tar shards (``data.name=wds/PATH``) and Hugging Face
datasets read as a stream (``hfids/NAME``), made by the tests, train by steps in one global order: N
processes train what one trains, loader workers change nothing, and a run resumed mid-epoch goes on
exactly where it stopped (decoding none of the samples before it). Nothing reaches the network."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from kdzoo.config import DataConfig, load_config
from kdzoo.data import load_data
from kdzoo.data.batches import DistInfo
from kdzoo.engine import build_trainer
from kdzoo.errors import KdzooError
from kdzoo.registry import registry
from tests.helpers import coloured_image, one_and_two_processes, teacher_weights

SHARDS, PER_SHARD, VAL = 4, 12, 9  # 48 training samples in 4 shards; 9 for validation


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """webdataset shards as webdataset writes them: per sample a ``KEY.png`` and a ``KEY.cls`` member;
    the training split in 4 shards named ``squares-train-NNN.tar``, validation in one."""
    root = tmp_path_factory.mktemp("wds")
    rng = np.random.default_rng(0)

    def write(path: Path, first: int, count: int) -> None:
        with tarfile.open(path, "w") as tar:
            for i in range(first, first + count):
                for name, data in (
                    (f"s{i:05d}.png", _png(coloured_image(i % 3, rng))),
                    (f"s{i:05d}.cls", b"%d" % (i % 3)),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))

    for s in range(SHARDS):
        write(root / f"squares-train-{s:03d}.tar", s * PER_SHARD, PER_SHARD)
    write(root / "squares-validation-000.tar", 1000, VAL)
    teacher_weights(root / "teacher.safetensors", 3)
    return root


@pytest.fixture(scope="module")
def hub_files(tmp_path_factory) -> Path:
    """A Hugging Face dataset as the Hub stores one: parquet files per split (4 for training), an
    ``image`` and a ClassLabel ``label`` column."""
    datasets = pytest.importorskip("datasets")  # kdzoo[hf], part of kdzoo[test]
    root = tmp_path_factory.mktemp("hfids")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["r", "g", "b"])})
    rng = np.random.default_rng(1)
    (root / "squares" / "data").mkdir(parents=True)

    def write(name: str, count: int) -> None:
        labels = [i % 3 for i in range(count)]
        rows = datasets.Dataset.from_dict(
            {"image": [coloured_image(label, rng) for label in labels], "label": labels}, features=features
        )
        rows.to_parquet(str(root / "squares" / "data" / name))

    for s in range(SHARDS):
        write(f"train-{s:05d}-of-{SHARDS:05d}.parquet", PER_SHARD)
    write("validation-00000-of-00001.parquet", VAL)
    teacher_weights(root / "teacher.safetensors", 3)
    return root


def _stream(shards: Path, **settings) -> DataConfig:
    defaults = {"batch_size": 8, "num_workers": 1, "stream_partitions": 2, "shuffle_buffer": 5}
    return DataConfig(name=f"wds/{shards}", **(defaults | settings))


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("method", ["kd", "crd"])
def test_a_webdataset_folder_trains_an_epoch(method, shards, tmp_path):
    """webdataset shards made by the test: every sample gets its place (CRD's memory bank is indexed
    by it) and its class from the shards' headers and class files, no image read; one epoch trains."""
    sets = [
        f"data.name=wds/{shards}",
        "data.img_size=32",
        "data.batch_size=8",
        "data.num_workers=1",
        "teacher.model=test_resnet",
        f"teacher.checkpoint={shards / 'teacher.safetensors'}",
        "student.model=test_resnet",
        "train.epochs=1",
    ]
    config = load_config([], sets, [method], registry().config_classes())
    trainer = build_trainer(config, registry(), tmp_path / "run", show_progress=False)
    train = trainer.data.train
    assert trainer.data.num_classes == 3 and train.num_samples == SHARDS * PER_SHARD
    assert len(train) == SHARDS * PER_SHARD // 8  # the stream states its size: steps = samples / batch
    assert train.class_labels().tolist() == [i % 3 for i in range(SHARDS * PER_SHARD)]
    trainer.fit()
    record = trainer.history[-1]
    assert np.isfinite(record["train"]["loss"]) and method in record["train"]


def test_one_global_order_whatever_the_workers_and_processes_and_a_resumed_epoch_goes_on_from_its_batch(shards):
    """Each sample's place: batch k takes batch_size / P samples from each partition in turn, so two
    processes' shares are the halves of one process's batches; loader workers, and a start mid-epoch,
    give the same batches (the samples before the start are read, not decoded); epochs differ."""
    one = load_data(_stream(shards, num_workers=1), seed=3).train
    epoch = list(one.epoch(1, with_index=True))
    assert len(epoch) == 6 and all(len(y) == 8 for _, y, _ in epoch)
    ids = torch.cat([i for _, _, i in epoch])
    assert ids.unique().numel() > 40 and set(ids.tolist()) <= set(range(48))
    three = load_data(_stream(shards, num_workers=3), seed=3).train
    assert _same([x for x, _, _ in epoch], [x for x, _, _ in three.epoch(1, with_index=True)])
    assert _same([x for x, _, _ in epoch[2:]], [x for x, _ in three.epoch(1, start=2)])
    halves = []
    for rank in (0, 1):
        three.shard_info = DistInfo(rank, 2, grouped=True)
        halves.append(list(three.epoch(1, start=1, with_index=True)))
    for (x0, y0, i0), (x1, y1, i1), (x, y, i) in zip(*halves, epoch[1:], strict=True):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([i0, i1]), i)
        assert torch.equal(torch.cat([y0, y1]), y)
    # a process reads only its own partitions' shards: rank 0's samples come from two of the four
    shards_of = {rank: {int(i) // PER_SHARD for _, _, ids_ in halves[rank] for i in ids_} for rank in (0, 1)}
    assert len(shards_of[0]) == len(shards_of[1]) == 2 and not shards_of[0] & shards_of[1]
    other = list(one.epoch(2, with_index=True))
    assert not torch.equal(torch.cat([i for _, _, i in other]), ids)  # another shard order and shuffle
    val = load_data(_stream(shards, eval_batch_size=4), seed=3).val
    assert [len(y) for _, y in val.epoch(0)] == [4, 4, 1]  # the split whole, in stored order


def test_a_hugging_face_stream_trains_by_steps(hub_files, tmp_path):
    """A stream that does not state its size trains the steps data.steps_per_epoch sets, and asks for
    them in one line when unset; its shards are the dataset's files."""
    cfg = DataConfig(
        name=f"hfids/{hub_files / 'squares'}",
        root=str(tmp_path / "cache"),
        batch_size=8,
        num_workers=2,
        stream_partitions=4,
        steps_per_epoch=3,
    )
    data = load_data(cfg, seed=0)
    assert data.num_classes == 3 and data.train.source.shards == SHARDS and len(data.train) == 3
    batches = list(data.train.epoch(0))
    assert [len(y) for _, y in batches] == [8, 8, 8]
    assert _same([x for x, _ in batches[1:]], [x for x, _ in data.train.epoch(0, start=1)])
    assert sum(len(y) for _, y in data.val.epoch(0)) == VAL
    with pytest.raises(KdzooError, match=r"does not state how many samples it has; set data.steps_per_epoch"):
        load_data(DataConfig(name=cfg.name, root=cfg.root), seed=0)


def test_what_a_stream_cannot_do_is_one_line(shards, tmp_path):
    with pytest.raises(KdzooError, match=r"data.stream_partitions=3 does not split over 2 processes"):
        data = load_data(_stream(shards, stream_partitions=3, batch_size=6), seed=0)
        data.train.shard_info = DistInfo(0, 2, grouped=True)
        next(data.train.epoch(0))
    with pytest.raises(KdzooError, match=r"has 4 shard\(s\), fewer than the 8 stream partitions"):
        next(load_data(_stream(shards, stream_partitions=8), seed=0).train.epoch(0))
    with pytest.raises(KdzooError, match=r"batch_size=6 does not split over data.stream_partitions=4"):
        next(load_data(_stream(shards, stream_partitions=4, batch_size=6), seed=0).train.epoch(0))
    with pytest.raises(KdzooError, match=r"no webdataset shards for split 'test'"):
        load_data(_stream(shards, val_split="test"), seed=0)
    for key, value in (("views", 2), ("train_limit", 6)):
        with pytest.raises(KdzooError, match=rf"data.{key} is not available for a streamed dataset"):
            load_data(_stream(shards, **{key: value}), seed=0)
    with pytest.raises(KdzooError, match=r"tfds/ reader \(TensorFlow datasets\) is not supported"):
        load_data(DataConfig(name="tfds/mnist"), seed=0)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x-train-0.tar").write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(KdzooError, match=r"shard .*x-train-0.tar cannot be read"):
        load_data(DataConfig(name=f"wds/{broken}"), seed=0)
    sets = [f"data.name=wds/{shards}", "teacher.cache=true", "data.augment=false"]
    config = load_config([], sets, ["kd"], registry().config_classes())
    with pytest.raises(KdzooError, match=r"a streamed one \(wds/, hfids/\) .* gives no sample's view twice"):
        build_trainer(config, registry(), tmp_path / "run", show_progress=False)


# ------------------------------------------------------------------ a stream on two processes

WORKER = Path(__file__).with_name("scale_data_worker.py")
STEPS, BATCH, EPOCHS = 3, 8, 2
CRASH_AT = STEPS + 2  # one loss computation a step: the second step of the second epoch


def _decoded(out: Path, phase: str, rank: int, split: str = "train") -> list[str]:
    lines = (out / f"decoded-{phase}-rank{rank}.txt").read_text().splitlines()
    return [path for _, path in (line.split(" ", 1) for line in lines) if f"/{split}/" in path]


def test_a_stream_on_two_processes_trains_what_one_trains_and_resumes_mid_epoch_exactly(hub_files, tmp_path):
    """hfids/ on 2 gloo processes (2 of 4 partitions each, one loader worker each, augmentation on):
    each process decodes exactly its half of every global batch of one process's run, the runs end
    alike; killed in the second epoch's second step and resumed from the checkpoint before it, each
    process decodes from that step on only and ends bit-equal to its uninterrupted run."""
    sets = [
        f"data.name=hfids/{hub_files / 'squares'}",
        "data.img_size=32",
        f"data.batch_size={BATCH}",
        "data.eval_batch_size=4",
        f"data.steps_per_epoch={STEPS}",
        "data.stream_partitions=4",
        "data.shuffle_buffer=6",
        "data.num_workers=1",
        "teacher.model=test_resnet",
        f"teacher.checkpoint={hub_files / 'teacher.safetensors'}",
        "student.model=test_resnet",
        f"train.epochs={EPOCHS}",
        "train.checkpoint_every=1",
        "train.precision=fp64",  # the processes' reductions round as one process's do (test_distributed)
        "train.log_every=1",
    ]
    caches = {run: [f"data.root={tmp_path / run}-cache"] for run in ("one", "two")}  # each run its own
    one, two = one_and_two_processes(WORKER, tmp_path, CRASH_AT, sets, **caches)

    half = BATCH // 2
    single = _decoded(one, "whole", 0)
    ranks = [_decoded(two, "whole", rank) for rank in (0, 1)]
    assert len(single) == EPOCHS * STEPS * BATCH and all(len(r) == EPOCHS * STEPS * half for r in ranks)
    for b in range(EPOCHS * STEPS):
        assert (
            ranks[0][b * half : (b + 1) * half] + ranks[1][b * half : (b + 1) * half]
            == single[b * BATCH : (b + 1) * BATCH]
        )
    assert sorted(_decoded(two, "whole", 0, "validation") + _decoded(two, "whole", 1, "validation")) == sorted(
        _decoded(one, "whole", 0, "validation")
    )

    a, b = (torch.load(d / "whole" / "last.pt", weights_only=True) for d in (one, two))
    for first, second in zip(a["history"], b["history"], strict=True):
        assert second["train"]["ce"] == pytest.approx(first["train"]["ce"], rel=1e-6)
        assert second["val"]["top1"] == first["val"]["top1"]
    for name, value in a["student"].items():
        assert torch.allclose(value.double(), b["student"][name].double(), rtol=1e-6, atol=1e-9), name

    for rank in (0, 1):  # resumed after the second epoch's first step: decoding from its second on
        assert _decoded(two, "resumed", rank) == ranks[rank][(STEPS + 1) * half :], rank
    c = torch.load(two / "crashed" / "last.pt", weights_only=True)
    assert all(torch.equal(value, c["student"][name]) for name, value in b["student"].items())
    assert [epoch["val"] for epoch in c["history"]] == [epoch["val"] for epoch in b["history"]]


def test_kdzoo_list_names_the_readers():
    from click.testing import CliRunner

    from kdzoo.cli import main

    listed = CliRunner().invoke(main, ["list", "--datasets"]).output
    assert "== dataset readers (data.name) ==" in listed
    assert all(prefix in listed for prefix in ("wds/PATH", "hfids/NAME", "hfds/NAME", "torch/NAME"))


def test_a_teacher_kdzoo_trains_reads_the_same_splits_and_samples_per_epoch():
    """The teacher kdzoo trains first reads the run's splits and stream, an epoch of as many samples in
    its own batches (teacher.train.batch_size)."""
    from kdzoo.engine.teacher_files import teacher_data

    sets = [
        "data.name=hfids/somewhere",
        "data.train_split=fit",
        "data.val_split=check",
        "data.batch_size=32",
        "data.steps_per_epoch=10",
        "data.stream_partitions=4",
        "teacher.train.batch_size=64",
    ]
    data = teacher_data(load_config([], sets, ["kd"], registry().config_classes()))
    assert (data.train_split, data.val_split, data.steps_per_epoch, data.stream_partitions) == ("fit", "check", 5, 4)
