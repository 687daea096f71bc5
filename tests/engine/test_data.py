import gzip
import os
import struct

import numpy as np
import pytest
import torch

from kdzoo.config import DataConfig
from kdzoo.data import load_data, load_digits_arrays, stratified_split
from kdzoo.errors import KdzooError


def test_digits_are_the_real_embedded_set():
    images, labels = load_digits_arrays()
    assert images.shape == (1797, 1, 8, 8) and labels.shape == (1797,)
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_split_is_stratified_and_fixed():
    _, labels = load_digits_arrays()
    train, val = stratified_split(labels, 0.2, seed=0)
    assert len(set(train) & set(val)) == 0 and len(train) + len(val) == len(labels)
    per_class = np.bincount(labels[val]) / np.bincount(labels)
    assert np.all(np.abs(per_class - 0.2) < 0.01)
    a = load_data(DataConfig(img_size=16), seed=0)
    b = load_data(DataConfig(img_size=16), seed=5)
    assert torch.equal(a.val.labels, b.val.labels)  # the val set does not move with the training seed
    x, y = next(a.val.epoch(0))
    assert x.shape == (256, 1, 16, 16) and a.num_classes == 10 and a.in_chans == 1


def test_epoch_batches_depend_only_on_seed_and_epoch():
    data = load_data(DataConfig(name="synthetic", batch_size=16), seed=3)
    first = [y for _, y in data.train.epoch(4)]
    again = [y for _, y in data.train.epoch(4)]
    other = [y for _, y in data.train.epoch(5)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    xa, _ = next(data.train.epoch(4))
    xb, _ = next(data.train.epoch(4))
    assert torch.equal(xa, xb)  # augmentation too


def _idx(path, array, magic):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_gzipped_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)), 2051)
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10, 2049)
    data = load_data(DataConfig(name="fashion_mnist", root=str(tmp_path), img_size=32, batch_size=8), seed=0)
    assert data.train.num_samples == 40 and data.val.num_samples == 20 and data.in_chans == 1
    x, y = next(data.train.epoch(0))
    assert x.shape == (8, 1, 32, 32) and y.dtype == torch.long


def test_missing_local_datasets_fail_with_what_to_do(tmp_path):
    with pytest.raises(KdzooError, match="Fashion-MNIST not found .* apt-get install dataset-fashion-mnist"):
        load_data(DataConfig(name="fashion_mnist", root=str(tmp_path)), seed=0)
    with pytest.raises(KdzooError, match="CIFAR100 not found.*never downloads"):
        load_data(DataConfig(name="cifar100", root=str(tmp_path)), seed=0)
    with pytest.raises(KdzooError, match="imagefolder: .*train/ not found"):
        load_data(DataConfig(name="imagefolder", root=str(tmp_path)), seed=0)
    with pytest.raises(KdzooError, match="unknown dataset 'digit' \\(did you mean 'digits'\\?\\)"):
        load_data(DataConfig(name="digit"), seed=0)


def test_image_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((20, 24, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    data = load_data(DataConfig(name="imagefolder", root=str(tmp_path), img_size=16, batch_size=4), seed=0)
    assert data.num_classes == 2 and data.in_chans == 3 and len(data.train) == 1
    x, y = next(data.train.epoch(0))
    assert x.shape == (4, 3, 16, 16)
    assert [len(b[1]) for b in data.val.epoch(0)] == [6]


def test_train_limit_is_a_seeded_class_balanced_subset_for_every_kind(tmp_path):
    """An ImageFolder lists its files class by class: the first N would be one or two classes."""
    from PIL import Image

    for split, per_class in (("train", 12), ("val", 1)):
        for cls in "abcd":
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (4, 4)).save(tmp_path / split / cls / f"{i}.png")
    folder = DataConfig(name="imagefolder", root=str(tmp_path), img_size=8, batch_size=4, train_limit=10)
    limited = load_data(folder, seed=0).train.dataset
    labels = [limited.dataset.targets[i] for i in limited.indices]
    assert sorted(np.bincount(labels).tolist()) == [2, 2, 3, 3]
    assert load_data(folder, seed=7).train.dataset.indices == limited.indices  # the same subset for every seed

    digits = load_data(DataConfig(train_limit=100), seed=0).train
    assert np.bincount(digits.labels.numpy()).tolist() == [10] * 10
    everything = load_data(DataConfig(), seed=0).train
    assert load_data(DataConfig(train_limit=10**6), seed=0).train.num_samples == everything.num_samples


def test_batch_shift_is_the_per_sample_crop_of_the_padded_images():
    from kdzoo.data.batches import shift

    torch.manual_seed(0)
    x = torch.randn(7, 3, 9, 9)
    dy, dx = torch.randint(0, 5, (7,)), torch.randint(0, 5, (7,))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    one_by_one = torch.stack([padded[i, :, dy[i] : dy[i] + 9, dx[i] : dx[i] + 9] for i in range(7)])
    assert torch.equal(shift(x, 2, dy, dx), one_by_one)


def test_fashion_mnist_follows_data_root_with_no_stale_copy(tmp_path):
    """Two roots with different files: each run reads its own, nothing unpacked is reused."""
    rng = np.random.default_rng(0)
    for root, first_label in (("a", 3), ("b", 7)):
        (tmp_path / root).mkdir()
        for prefix, n in (("train", 40), ("t10k", 20)):
            _idx(tmp_path / root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)), 2051)
            _idx(tmp_path / root / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) + first_label) % 10, 2049)
    for root, first_label in (("a", 3), ("b", 7), ("a", 3)):
        data = load_data(DataConfig(name="fashion_mnist", root=str(tmp_path / root)), seed=0)
        assert data.val.labels[0].item() == first_label


# --------------------------------------------------------------------------- image folders: what ImageFolder gets wrong


def _png(path):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path, format="PNG")


def test_image_folder_scan_finds_what_torchvision_finds_in_its_order(tmp_path):
    from torchvision.datasets import ImageFolder

    from kdzoo.data.datasets import scan_image_folder

    for name in ("a/1.png", "a/sub/2.PNG", "a/0.jpg", "a/sub/deeper/3.png", "b/x.png", "c/y.webp"):
        _png(tmp_path / "train" / name)
    (tmp_path / "train" / "c" / "notes.txt").touch()  # not an image: skipped by both
    _png(tmp_path / "elsewhere" / "q.png")
    (tmp_path / "train" / "c" / "linked").symlink_to(tmp_path / "elsewhere")  # a link to another disk is fine
    reference = ImageFolder(str(tmp_path / "train"))
    assert scan_image_folder(tmp_path / "train") == (reference.classes, reference.samples)


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda b: os.mkfifo(b / "fifo.png"), "fifo.png is a FIFO, not an image file; remove it"),
        (lambda b: (b / "broken.png").symlink_to("nowhere"), "broken.png is a broken symlink"),
        (lambda b: (b / "loop").symlink_to(".."), "b/loop and "),  # train/b/loop -> train
        (lambda b: (b / "self").symlink_to("."), "b/self and "),
        (lambda b: (b / "to-a").symlink_to("../a"), "b/to-a and "),  # a's images relabelled b
    ],
)
def test_image_folder_scan_refuses_what_would_hang_or_relabel(tmp_path, make, needle):
    from kdzoo.data.datasets import scan_image_folder

    for name in ("a/0.png", "b/0.png"):
        _png(tmp_path / "train" / name)
    make(tmp_path / "train" / "b")
    with pytest.raises(KdzooError) as info:
        scan_image_folder(tmp_path / "train")
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_image_folder_without_classes_or_images_is_one_line(tmp_path):
    from kdzoo.data.datasets import scan_image_folder

    (tmp_path / "train").mkdir()
    with pytest.raises(KdzooError, match="no class folder in it"):
        scan_image_folder(tmp_path / "train")
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(KdzooError, match=r"no images in class folder\(s\) empty"):
        scan_image_folder(tmp_path / "train")


# --------------------------------------------------------------------------- CIFAR folders


def _cifar_folder(tmp_path, skip=()):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        if name not in skip:
            (folder / name).write_bytes(b"not the published file")
    return folder


def test_cifar_missing_batch_file_is_named(tmp_path):
    _cifar_folder(tmp_path, skip=("test_batch",))
    with pytest.raises(KdzooError, match="CIFAR10: .*test_batch is missing; replace .* with a complete copy"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)), seed=0)


def test_cifar_damaged_batch_file_is_named_before_anything_is_unpickled(tmp_path):
    _cifar_folder(tmp_path)
    with pytest.raises(KdzooError, match="CIFAR10: .*data_batch_1 is damaged .*MD5"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)), seed=0)
