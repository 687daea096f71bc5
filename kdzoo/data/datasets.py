"""Datasets that need no download: the embedded digits, and local Fashion-MNIST, CIFAR, ImageFolder.

Each loader turns ``data.*`` settings into a :class:`~kdzoo.data.batches.DataBundle`; nothing is
fetched from the network, and a missing or broken file is a one-line error naming it.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdzoo.config.schema import DataConfig
from kdzoo.data.batches import DataBundle, LoaderBatches, Normalisation, TensorBatches
from kdzoo.data.idx import read_idx
from kdzoo.errors import KdzooError, close_matches, first_line


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed per-class split: the same val set for every run with the same seed."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        k = int(round(len(idx) * val_fraction))
        val.extend(idx[:k])
        train.extend(idx[k:])
    return np.sort(np.array(train)), np.sort(np.array(val))


def _bundle(name, cfg, seed, train_xy, val_xy, num_classes, norm, flip) -> DataBundle:
    (xt, yt), (xv, yv) = train_xy, val_xy
    if cfg.train_limit is not None:
        xt, yt = xt[: cfg.train_limit], yt[: cfg.train_limit]
    common = dict(img_size=cfg.img_size, norm=norm)
    return DataBundle(
        name,
        TensorBatches(
            xt, yt, cfg.batch_size, train=True, augment=cfg.augment, flip=flip, seed=seed, views=cfg.views, **common
        ),
        TensorBatches(xv, yv, cfg.eval_batch_size, train=False, **common),
        num_classes,
        xt.shape[1],
    )


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (1,797 8x8 scans, values 0..16), shipped inside kdzoo."""
    with resources.files("kdzoo.assets").joinpath("digits.csv.gz").open("rb") as raw:
        table = np.loadtxt(gzip.open(raw), delimiter=",", dtype=np.float32)
    return table[:, :-1].reshape(-1, 1, 8, 8) / 16.0, table[:, -1].astype(np.int64)


def digits(cfg: DataConfig, seed: int) -> DataBundle:
    images, labels = load_digits_arrays()
    train_idx, val_idx = stratified_split(labels, 0.2, seed=0)  # fixed: comparable across seeds
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    norm = Normalisation((0.305,), (0.376,))
    return _bundle("digits", cfg, seed, (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx]), 10, norm, flip=False)


DEBIAN_FASHION_ROOT = "/usr/share/datasets/fashion-mnist"


def _fashion_file(root: Path, name: str) -> Path:
    """``name`` or ``name.gz`` in ``root``, or where torchvision keeps them (``FashionMNIST/raw``)."""
    for folder in (root, root / "FashionMNIST" / "raw"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise KdzooError(
        f"Fashion-MNIST not found under {root}: missing {name} (.gz or unpacked); "
        f"on Debian: apt-get install dataset-fashion-mnist, or set data.root"
    )


def _idx_pair(root: Path, images_name: str, labels_name: str) -> tuple[Tensor, Tensor]:
    images_file, labels_file = _fashion_file(root, images_name), _fashion_file(root, labels_name)
    images, labels = read_idx(images_file, 3), read_idx(labels_file, 1)
    if len(images) != len(labels):
        raise KdzooError(f"{images_file} holds {len(images)} images but {labels_file} holds {len(labels)} labels")
    if labels.size and labels.max() >= 10:
        raise KdzooError(f"{labels_file} has label {labels.max()}; Fashion-MNIST labels are 0..9")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def fashion_mnist(cfg: DataConfig, seed: int) -> DataBundle:
    root = Path(cfg.root or DEBIAN_FASHION_ROOT)
    train = _idx_pair(root, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    test = _idx_pair(root, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    norm = Normalisation((0.286,), (0.353,))
    return _bundle("fashion_mnist", cfg, seed, train, test, 10, norm, flip=True)


def _cifar(
    cls_name: str, folder: str, num_classes: int, norm: Normalisation
) -> Callable[[DataConfig, int], DataBundle]:
    def load(cfg: DataConfig, seed: int) -> DataBundle:
        import torchvision.datasets as tvd

        root = Path(cfg.root or "data")
        if not (root / folder).is_dir():
            raise KdzooError(
                f"{cls_name} not found: expected {root / folder}/ (the python version); "
                f"kdzoo never downloads, put it there or set data.root"
            )
        make = getattr(tvd, cls_name)
        train, test = make(str(root), train=True, download=False), make(str(root), train=False, download=False)

        def as_tensor(ds):
            return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

        return _bundle(cls_name.lower(), cfg, seed, as_tensor(train), as_tensor(test), num_classes, norm, flip=True)

    return load


def synthetic(cfg: DataConfig, seed: int) -> DataBundle:
    """Random images whose class is a fixed pattern plus noise: learnable, instant, for tests."""
    gen = torch.Generator().manual_seed(1234)
    patterns = torch.rand(10, 3, 8, 8, generator=gen)
    labels = torch.arange(640) % 10
    images = (patterns[labels] + 0.3 * torch.randn(640, 3, 8, 8, generator=gen)).clamp(0, 1)
    norm = Normalisation((0.5,) * 3, (0.3,) * 3)
    return _bundle(
        "synthetic", cfg, seed, (images[:512], labels[:512]), (images[512:], labels[512:]), 10, norm, flip=False
    )


IMAGENET_NORM = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def image_folder(cfg: DataConfig, seed: int) -> DataBundle:
    """``data.root/train/<class>/*`` and ``data.root/val/<class>/*`` (torchvision's ImageFolder)."""
    from torchvision import transforms as T

    root = Path(cfg.root or "data")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise KdzooError(f"imagefolder: {root / split}/ not found; set data.root to a folder with train/ and val/")
    size = cfg.img_size
    norm = T.Normalize(IMAGENET_NORM.mean, IMAGENET_NORM.std)
    augment = [T.RandomResizedCrop(size, scale=(0.35, 1.0)), T.RandomHorizontalFlip()] if cfg.augment else []
    train_tf = T.Compose([*(augment or [T.Resize(size), T.CenterCrop(size)]), T.ToTensor(), norm])
    val_tf = T.Compose([T.Resize(int(round(size / 0.875))), T.CenterCrop(size), T.ToTensor(), norm])
    train, val = _image_folder(root / "train", train_tf), _image_folder(root / "val", val_tf)
    if train.classes != val.classes:
        raise KdzooError(f"imagefolder: train/ and val/ under {root} have different class folders")
    if len(train.classes) < 2:
        raise KdzooError(
            f"imagefolder: {root / 'train'} has {len(train.classes)} class folder ({', '.join(train.classes)}); "
            f"classification needs at least two, one folder per class"
        )
    if cfg.train_limit is not None:
        from torch.utils.data import Subset

        train = Subset(train, range(min(cfg.train_limit, len(train))))
    return DataBundle(
        "imagefolder",
        LoaderBatches(train, cfg.batch_size, True, cfg.num_workers, seed),
        LoaderBatches(val, cfg.eval_batch_size, False, cfg.num_workers, seed),
        len(val.classes),
        3,
    )


def _image_folder(folder: Path, transform):
    from torchvision import datasets

    try:
        return datasets.ImageFolder(str(folder), transform=transform, loader=decode_image)
    except FileNotFoundError as exc:  # no class folder, or class folders without images
        raise KdzooError(f"imagefolder: {folder}: {first_line(exc)}") from None


def decode_image(path: str):
    """An RGB image, or a one-line error naming the file that cannot be decoded."""
    from PIL import Image

    try:
        with open(path, "rb") as fh:
            return Image.open(fh).convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for unknown, truncated and broken files
        raise KdzooError(f"image {path} cannot be decoded ({exc}); remove or replace it") from None


CIFAR_NORM = Normalisation((0.507, 0.487, 0.441), (0.267, 0.256, 0.276))
DATASETS: dict[str, Callable[[DataConfig, int], DataBundle]] = {
    "digits": digits,
    "fashion_mnist": fashion_mnist,
    "cifar10": _cifar("CIFAR10", "cifar-10-batches-py", 10, CIFAR_NORM),
    "cifar100": _cifar("CIFAR100", "cifar-100-python", 100, CIFAR_NORM),
    "imagefolder": image_folder,
    "synthetic": synthetic,
}


def load_data(cfg: DataConfig, seed: int) -> DataBundle:
    if cfg.name not in DATASETS:
        raise KdzooError(
            f"unknown dataset '{cfg.name}'{close_matches(cfg.name, DATASETS)}; known: {', '.join(DATASETS)}"
        )
    return DATASETS[cfg.name](cfg, seed)
