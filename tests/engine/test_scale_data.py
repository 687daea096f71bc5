"""Each process loads only its share: one global order per (seed, epoch), each process decoding only its
part of every global batch, resumed epochs decoding nothing they skip, and evaluation shared among the
processes with one process's counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kdzoo.data.batches import (
    DistInfo,
    GlobalBatchSampler,
    LoaderBatches,
    Normalisation,
    TensorBatches,
    evaluation_batches,
)
from tests.helpers import coloured_image, one_and_two_processes, teacher_weights

WORKER = Path(__file__).with_name("scale_data_worker.py")


@pytest.mark.parametrize("samples, batch_size, seed, epoch", [(23, 4, 0, 0), (40, 8, 3, 5), (7, 8, 1, 2)])
def test_the_global_order_is_the_one_a_shuffling_data_loader_gave(samples, batch_size, seed, epoch):
    """What one process trained on before each process read its own share: the same batches."""
    drop_last = samples >= batch_size
    loader = DataLoader(
        list(range(samples)),
        batch_size=batch_size,
        shuffle=True,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed * 100_003 + epoch),
    )
    batches = [batch.tolist() for batch in loader]  # once: each pass over the loader draws again
    sampler = GlobalBatchSampler(samples, batch_size, shuffle=True, seed=seed)
    sampler.plan(epoch, range(len(batches)), DistInfo())
    assert [[index for index, _ in batch] for batch in sampler] == batches
    # two processes: each the contiguous half of every batch, keyed by the epoch
    halves = []
    for rank in (0, 1):
        sampler.plan(epoch, range(1, len(batches)), DistInfo(rank, 2, grouped=True))
        halves.append(list(sampler))
    for b, (first, second) in enumerate(zip(*halves, strict=True), start=1):
        assert [index for index, _ in first + second] == batches[b]
        assert {e for _, e in first + second} == {epoch}


class _RandomSamples:
    """A map-style set whose samples draw from torch's RNG, as random augmentation does."""

    targets = [i % 3 for i in range(12)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return torch.rand(3) + index, self.targets[index]


def test_a_samples_augmentation_depends_on_neither_the_worker_nor_the_batches_read_before_it():
    """So a resumed epoch skips batches without reading them, and workers persist across epochs."""
    one_worker = LoaderBatches(_RandomSamples(), batch_size=4, train=True, num_workers=1, seed=5)
    two_workers = LoaderBatches(_RandomSamples(), batch_size=4, train=True, num_workers=2, seed=5)
    epochs = [[x for x, _ in one_worker.epoch(e)] for e in (0, 1)]
    assert not torch.equal(epochs[0][0], epochs[1][0])  # another order and other draws each epoch
    assert all(torch.equal(a, b) for a, b in zip(epochs[1], [x for x, _ in two_workers.epoch(1)], strict=True))
    resumed = [x for x, _ in two_workers.epoch(1, start=2)]
    assert all(torch.equal(a, b) for a, b in zip(epochs[1][2:], resumed, strict=True))
    # a pass started inside another gets a loader of its own: neither disturbs the other
    inner_passes = [[x for x, _ in one_worker.epoch(0)] for _ in one_worker.epoch(1)]
    assert all(torch.equal(a, b) for inner in inner_passes for a, b in zip(epochs[0], inner, strict=True))
    # training draws on, after the passes, from the same global RNG as if none had run
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    list(LoaderBatches(_RandomSamples(), batch_size=4, train=True, num_workers=1, seed=5).epoch(0))
    assert torch.equal(torch.rand(2), expected)


@pytest.mark.parametrize("world", [2, 3, 4, 7])
def test_evaluation_shares_are_contiguous_whole_batches_covering_the_set_once(world):
    """21 samples in batches of 5 (the last of 1): each process scores whole batches of one process's
    pass, none twice, none padded; with 7 processes for 5 batches two processes score nothing."""
    labels = torch.arange(21) % 3
    images = torch.rand(21, 3, 8, 8)
    val = TensorBatches(images, labels, 5, img_size=8, norm=Normalisation((0.5,) * 3, (0.25,) * 3), train=False)
    one = list(val.epoch(0))
    shares = [list(val.evaluation_share(DistInfo(rank, world, grouped=True))) for rank in range(world)]
    together = [batch for share in shares for batch in share]
    assert len(together) == len(one) == 5
    for (x, y), (x1, y1) in zip(together, one, strict=True):
        assert torch.equal(x, x1) and torch.equal(y, y1)
    planned = [evaluation_batches(5, DistInfo(rank, world, grouped=True)) for rank in range(world)]
    assert [len(share) for share in shares] == [len(batches) for batches in planned]
    assert max(map(len, planned)) - min(map(len, planned)) <= 1


# ------------------------------------------------------------------ an image folder on two processes

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 8, 7  # 24 training images, 21 for validation: odd
BATCH, EVAL_BATCH, EPOCHS = 8, 5, 2  # 3 steps an epoch, 5 evaluation batches (the last of one image)
ACCUMULATE = 2  # two micro-batches a step: two loss computations
CRASH_AT = (TRAIN_PER_CLASS * CLASSES // BATCH + 1) * ACCUMULATE + 1  # the second step of the second epoch
#: a paper's recipe on top (issue 31): timm's RandAugment and random erasing, mixup and cutmix with
#: label smoothing, warmup, clipping, accumulation and the student's EMA; all of it drawn so that two
#: processes train what one trains and a resumed run what an uninterrupted one does
RECIPE = [
    "data.auto_augment=rand-m9-mstd0.5-inc1",
    "data.re_prob=0.25",
    "data.mixup=0.8",
    "data.cutmix=1.0",
    "train.label_smoothing=0.1",
    "optim.warmup_epochs=1",
    "optim.clip_grad=5.0",
    f"train.accumulate={ACCUMULATE}",
    "train.ema=true",
    "train.ema_decay=0.9",
]


def _image_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for label in range(CLASSES):
        for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                coloured_image(label, rng, (20, 24), 40).save(folder / f"{i}.png")


def _decoded(out: Path, phase: str, rank: int) -> list[tuple[int, str]]:
    """The images one process decoded, in order: (worker pid, path)."""
    lines = (out / f"decoded-{phase}-rank{rank}.txt").read_text().splitlines()
    return [(int(pid), path) for pid, path in (line.split(" ", 1) for line in lines)]


def _split(decoded: list[tuple[int, str]], split: str) -> list[tuple[int, str]]:
    return [(pid, path) for pid, path in decoded if f"/{split}/" in path]


def _gaps(one: dict, two: dict) -> float:
    """The largest relative difference between two state dicts (floats; the rest equal)."""
    worst = 0.0
    for name, value in one.items():
        if value.is_floating_point():
            gap = (value - two[name]).abs().max().item() / max(1.0, value.abs().max().item())
            worst = max(worst, gap)
        else:
            assert torch.equal(value, two[name]), name
    return worst


def test_two_processes_decode_only_their_share_train_what_one_trains_and_resume_decoding_nothing_skipped(tmp_path):
    """ImageFolder data on 2 gloo processes, random augmentation on, one loader worker each: every
    process decodes its half of each global batch of the one global order (counted) and only its
    evaluation share, and the run equals one process's (per-epoch CE, weights, the student's and the
    teacher's top-1 on a validation set of 21 images); killed mid-epoch and resumed, it decodes no
    skipped image and ends bit-equal to its uninterrupted run. Each process's images all come from
    one worker per loader: workers persist across epochs. All of it with a paper's recipe on (RECIPE)."""
    _image_folder(tmp_path / "images")
    teacher = teacher_weights(tmp_path / "teacher.safetensors", CLASSES)
    sets = [
        "data.name=imagefolder",
        f"data.root={tmp_path / 'images'}",
        "data.img_size=32",
        f"data.batch_size={BATCH}",
        f"data.eval_batch_size={EVAL_BATCH}",
        "data.num_workers=1",
        "data.augment=true",
        "teacher.model=test_resnet",
        f"teacher.checkpoint={teacher}",
        "student.model=test_resnet",
        f"train.epochs={EPOCHS}",
        "train.checkpoint_every=1",
        # float64: the processes' reductions round as one process's do to ~1e-16 (test_distributed)
        "train.precision=fp64",
        "train.log_every=1",
        *RECIPE,
    ]
    one, two = one_and_two_processes(WORKER, tmp_path, CRASH_AT, sets)

    # what each process decoded: its half of every global batch of the one order, its evaluation share
    steps, half = TRAIN_PER_CLASS * CLASSES // BATCH, BATCH // 2
    single = _decoded(one, "whole", 0)
    ranks = [_decoded(two, "whole", rank) for rank in (0, 1)]
    train_one = [path for _, path in _split(single, "train")]
    train_ranks = [[path for _, path in _split(r, "train")] for r in ranks]
    assert len(train_one) == EPOCHS * steps * BATCH and all(len(t) == EPOCHS * steps * half for t in train_ranks)
    for b in range(EPOCHS * steps):  # every batch of both epochs: rank 0's half, then rank 1's
        together = train_ranks[0][b * half : (b + 1) * half] + train_ranks[1][b * half : (b + 1) * half]
        assert together == train_one[b * BATCH : (b + 1) * BATCH], b
    val_one = [path for _, path in _split(single, "val")]
    val_ranks = [[path for _, path in _split(r, "val")] for r in ranks]
    evaluations = 1 + 2 * EPOCHS  # the teacher once, the student and its EMA after each epoch
    assert len(val_one) == evaluations * VAL_PER_CLASS * CLASSES
    share0 = 2 * EVAL_BATCH  # batches 0-1 of 5 on rank 0, 2-4 (11 images) on rank 1
    for e in range(evaluations):
        size = VAL_PER_CLASS * CLASSES
        per_pass = val_one[e * size : (e + 1) * size]
        assert val_ranks[0][e * share0 : (e + 1) * share0] == per_pass[:share0]
        assert val_ranks[1][e * (size - share0) : (e + 1) * (size - share0)] == per_pass[share0:]
    # one worker per loader over both epochs (and every evaluation): the workers persisted
    for decoded in (single, *ranks):
        for split in ("train", "val"):
            assert len({pid for pid, _ in _split(decoded, split)}) == 1, split

    # the same run: per-epoch CE, weights, the student's and the teacher's top-1 and CE
    a, b = (torch.load(d / "whole" / "last.pt", weights_only=True) for d in (one, two))
    for first, second in zip(a["history"], b["history"], strict=True):
        assert second["train"]["ce"] == pytest.approx(first["train"]["ce"], rel=1e-4)
        assert second["val"]["top1"] == first["val"]["top1"]
        assert second["val_ema"]["top1"] == first["val_ema"]["top1"]
        assert second["val"]["loss"] == pytest.approx(first["val"]["loss"], rel=1e-9)
    assert a["teacher_metrics"]["top1"] == b["teacher_metrics"]["top1"]
    assert _gaps(a["student"], b["student"]) <= 5e-4

    # killed in the second epoch's second step, resumed from the checkpoint after its first: each
    # process decodes from that step on only (what it decoded there uninterrupted), and ends bit-equal
    for rank in (0, 1):
        resumed = [path for _, path in _split(_decoded(two, "resumed", rank), "train")]
        assert resumed == train_ranks[rank][(steps + 1) * half :], rank
    c = torch.load(two / "crashed" / "last.pt", weights_only=True)
    assert _gaps(b["student"], c["student"]) == 0.0
    assert _gaps(b["ema"]["weights"], c["ema"]["weights"]) == 0.0
    assert [epoch["val"] for epoch in c["history"]] == [epoch["val"] for epoch in b["history"]]
    # the resumed epoch logs the uninterrupted means: each process went on from its own totals
    logged = [{k: v for k, v in epoch["train"].items() if k != "images_per_s"} for epoch in c["history"]]
    assert logged == [{k: v for k, v in epoch["train"].items() if k != "images_per_s"} for epoch in b["history"]]
