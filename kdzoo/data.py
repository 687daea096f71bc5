"""Datasets that need no download: the embedded digits, and local Fashion-MNIST, CIFAR, ImageFolder.

Small image sets are held in memory at native resolution and turned into model inputs a batch at
a time (resize to ``img_size``, normalise, augment), which is fast on CPU and GPU alike. Batch
order and augmentation draw from a generator seeded by (seed, epoch), so an epoch is the same
whether the run was interrupted before it or not.
"""

from __future__ import annotations

import gzip
import itertools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.config import DataConfig
from kdzoo.distributed import DistInfo, shard
from kdzoo.errors import KdzooError, close_matches
from kdzoo.idx import read_idx


@dataclass(frozen=True)
class Normalisation:
    mean: tuple[float, ...]
    std: tuple[float, ...]


class Batches:
    """What the engine needs of a batch source: its device, and this process's share of each batch."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.shard_info = DistInfo()  # set by the engine under torchrun

    def to(self, device: torch.device) -> Batches:
        self.device = torch.device(device)
        return self


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device`` without the host waiting: from pinned memory, asynchronously, on CUDA
    (a copy from ordinary memory would make the host wait for the GPU's queued work each step)."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether ``nbytes`` takes at most a quarter of the accelerator memory still free."""
    return device.type == "cuda" and nbytes <= torch.cuda.mem_get_info(device)[0] // 4


def batches_per_epoch(samples: int, batch_size: int, train: bool) -> int:
    """Training drops the ragged last batch; evaluation keeps it."""
    return (samples // batch_size or 1) if train else math.ceil(samples / batch_size)


class TensorBatches(Batches):
    """Mini-batches over an in-memory image tensor (N, C, H, W), uint8 or float in [0, 1]."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        img_size: int,
        norm: Normalisation,
        train: bool,
        augment: bool = False,
        flip: bool = False,
        seed: int = 0,
        views: int = 0,
    ):
        self.images, self.labels = images, labels.long()
        self.batch_size, self.img_size, self.norm = batch_size, img_size, norm
        self.train, self.augment, self.flip, self.seed = train, augment and train, flip, seed
        self.views = views
        self._norm_tensors: dict[torch.device, tuple[Tensor, Tensor]] = {}
        super().__init__()

    def __len__(self) -> int:
        return batches_per_epoch(len(self.labels), self.batch_size, self.train)

    def to(self, device: torch.device) -> TensorBatches:
        """Train on ``device``; on a GPU the whole set moves there when it fits, so batches are
        gathered, augmented and normalised on the GPU with no per-step copy from the host."""
        super().to(device)
        if fits_on(self.device, self.images.nbytes + self.labels.nbytes):
            self.images, self.labels = self.images.to(self.device), self.labels.to(self.device)
        return self

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def epoch(self, epoch: int, start: int = 0, with_index: bool = False) -> Iterator:
        """The batches of one epoch, from batch ``start`` on; they depend only on (seed, epoch).

        ``with_index`` adds each batch's sample indices (for per-sample caches).
        """
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        stored = to_device(order, self.images.device)  # the order where the images are, once an epoch
        for b in range(len(self)):
            batch = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx, rows = order[batch], stored[batch]
            params = self._draw(idx, gen, epoch)  # drawn for skipped batches too: later ones stay the same
            if b < start:
                continue
            if self.shard_info.enabled:  # drawn for the global batch, applied to this process's share
                idx, rows = shard(idx, self.shard_info), shard(rows, self.shard_info)
                params = None if params is None else tuple(shard(p, self.shard_info) for p in params)
            x = to_device(self._prepare(self.images[rows], params), self.device)
            y = to_device(self.labels[rows], self.device)
            yield (x, y, idx) if with_index else (x, y)

    @property
    def deterministic(self) -> bool:
        """Whether a sample looks the same in every epoch (no augmentation, or a fixed set of views)."""
        return not self.augment or self.views > 0

    def view_of(self, epoch: int) -> int:
        return epoch % self.views if self.augment and self.views else 0

    def view(self, idx: Tensor, view: int) -> Tensor:
        """The model input of samples ``idx`` in augmented view ``view`` (what training will see)."""
        return self._prepare(self.images[to_device(idx, self.images.device)], self._per_sample(idx, view))

    def _draw(self, idx: Tensor, gen: torch.Generator, epoch: int):
        if not self.augment:
            return None
        if self.views:
            return self._per_sample(idx, epoch % self.views)
        n, pad = len(idx), self._pad()
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        flip = torch.rand(n, generator=gen) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        return dy, dx, flip

    def _per_sample(self, idx: Tensor, view: int):
        """Augmentation keyed by (seed, sample, view): the same view of a sample in every epoch."""
        if not self.augment:
            return None
        pad, draws = self._pad(), []
        for i in idx.tolist():
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + i) * 97 + view)
            d = torch.randint(0, 2 * pad + 1, (2,), generator=gen)
            draws.append((int(d[0]), int(d[1]), bool(self.flip and torch.rand(1, generator=gen).item() < 0.5)))
        dy, dx, flip = zip(*draws, strict=True) if draws else ((), (), ())
        return torch.tensor(dy), torch.tensor(dx), torch.tensor(flip, dtype=torch.bool)

    def _pad(self) -> int:
        return max(1, self.img_size // 8)

    def _prepare(self, x: Tensor, params) -> Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        if params is not None:
            dy, dx, flip = (to_device(p, x.device) for p in params)
            x = shift(x, self._pad(), dy, dx)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        mean, std = self._norm_on(x.device)
        return (x - mean) / std

    def _norm_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        # made once per device: building them each step would copy from the host each step
        if device not in self._norm_tensors:
            self._norm_tensors[device] = tuple(
                torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (self.norm.mean, self.norm.std)
            )
        return self._norm_tensors[device]


def shift(x: Tensor, pad: int, dy: Tensor, dx: Tensor) -> Tensor:
    """Crop after zero padding by ``pad`` pixels at per-sample offsets (the CIFAR recipe), as one
    gather for the whole batch (a crop per sample would be a kernel launch per sample on a GPU)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (dy.view(-1, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx.view(-1, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    sample = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[sample, channel, rows, cols]


@dataclass
class DataBundle:
    """Train and validation batches plus what the models must be built for."""

    name: str
    train: Batches
    val: Batches
    num_classes: int
    in_chans: int


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


class LoaderBatches(Batches):
    """Mini-batches from a file-backed dataset through a DataLoader (workers decode images).

    Shuffling and worker seeds come from a generator seeded by (seed, epoch), like
    :class:`TensorBatches`, so an epoch's batches do not depend on what ran before it.
    """

    def __init__(self, dataset, batch_size: int, train: bool, num_workers: int, seed: int = 0):
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        # 0 means "choose": file-backed images need decoding workers to keep up with the model
        self.num_workers = num_workers or min(4, os.cpu_count() or 1)
        self.seed = seed
        super().__init__()

    def __len__(self) -> int:
        return batches_per_epoch(len(self.dataset), self.batch_size, self.train)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        from torch.utils.data import DataLoader

        # a fresh loader per epoch: worker seeds then come from the (seed, epoch) generator, so an epoch
        # is the same after a resume (persistent workers would carry their RNG across epochs)
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=self.train,
            drop_last=self.train and len(self.dataset) >= self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch),
        )
        try:
            for x, y in itertools.islice(loader, start, None):
                x, y = shard(x, self.shard_info), shard(y, self.shard_info)
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        except KdzooError as exc:  # raised in a worker, it arrives wrapped in that worker's traceback
            raise KdzooError(str(exc).strip().splitlines()[-1].removeprefix("kdzoo.errors.KdzooError: ")) from None


class IterableBatches(Batches):
    """Wraps a user's DataLoader (or any sized iterable of (images, labels)) for the engine; under
    torchrun, give it a DistributedSampler (it is not sharded again here)."""

    def __init__(self, loader):
        self.loader = loader
        super().__init__()

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        dataset = getattr(self.loader, "dataset", None)
        return len(dataset) if dataset is not None else len(self.loader)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler reshuffles per epoch
            sampler.set_epoch(epoch)
        for x, y in itertools.islice(self.loader, start, None):
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


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
        raise KdzooError(f"imagefolder: {folder}: {str(exc).splitlines()[0]}") from None


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
