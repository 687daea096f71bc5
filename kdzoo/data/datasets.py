"""Datasets that need no download: the embedded digits, and local Fashion-MNIST, CIFAR, ImageFolder.

Each loader turns ``data.*`` settings into a :class:`~kdzoo.data.batches.DataBundle`; nothing is
fetched from the network, and a missing or broken file is a one-line error naming it.
"""

from __future__ import annotations

import functools
import gzip
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdzoo.api import DatasetInfo, DatasetSplits
from kdzoo.config.checks import clip
from kdzoo.config.schema import DataConfig
from kdzoo.data.batches import DataBundle, LoaderBatches, Normalisation, TensorBatches
from kdzoo.data.contents import DataContents, in_memory, of_files
from kdzoo.data.idx import read_idx
from kdzoo.data.inputs import InputPrep, InputRequests, RunInputs
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


LIMIT_SEED = 0  # one subset for every run seed: runs that differ in their seed train on the same samples


def balanced_subset(labels: np.ndarray, limit: int, seed: int = LIMIT_SEED) -> np.ndarray:
    """``limit`` sample indices (sorted) drawn evenly from every class: each class's samples in a seeded
    random order, taken round-robin over the classes (a class with fewer samples gives all it has).
    Keeping the first N would keep the first classes only wherever samples are sorted by class
    (an ImageFolder always is)."""
    labels = np.asarray(labels)
    if limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == cls)) for cls in np.unique(labels)]
    # rank of each sample inside its class's order; taking the lowest ranks first is the round-robin
    rank = np.empty(len(labels), dtype=np.int64)
    for order in per_class:
        rank[order] = np.arange(len(order))
    chosen = np.lexsort((labels, rank))[:limit]  # by rank, ties by class: every class before any repeats
    return np.sort(chosen)


def _bundle(name, cfg, seed, train_xy, val_xy, num_classes, norm, flip, requests: InputRequests) -> DataBundle:
    (xt, yt), (xv, yv) = train_xy, val_xy
    contents = in_memory(train_xy, val_xy)  # the whole splits: the limit is a setting beside them
    if cfg.train_limit is not None:
        kept = torch.from_numpy(balanced_subset(yt.numpy(), cfg.train_limit))
        xt, yt = xt[kept], yt[kept]
    inputs = requests.resolve(InputPrep(mean=norm.mean, std=norm.std, size=cfg.img_size))

    def val_for(prep: InputPrep) -> TensorBatches:
        return TensorBatches(xv, yv, cfg.eval_batch_size, img_size=prep.size, norm=_norm(prep), train=False)

    render = inputs.render
    return DataBundle(
        name,
        TensorBatches(
            xt,
            yt,
            cfg.batch_size,
            img_size=render.size,
            norm=_norm(render),
            train=True,
            augment=cfg.augment,
            flip=flip,
            seed=seed,
            views=cfg.views,
        ),
        val_for(inputs.student),
        num_classes,
        xt.shape[1],
        contents,
        inputs=inputs,
        teacher_val=None if inputs.teacher == inputs.student else val_for(inputs.teacher),
    )


def _norm(prep: InputPrep) -> Normalisation:
    return Normalisation(prep.mean, prep.std)


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (1,797 8x8 scans, values 0..16), shipped inside kdzoo."""
    with resources.files("kdzoo.assets").joinpath("digits.csv.gz").open("rb") as raw:
        table = np.loadtxt(gzip.open(raw), delimiter=",", dtype=np.float32)
    return table[:, :-1].reshape(-1, 1, 8, 8) / 16.0, table[:, -1].astype(np.int64)


def digits(cfg: DataConfig, seed: int, requests: InputRequests = InputRequests()) -> DataBundle:
    images, labels = load_digits_arrays()
    train_idx, val_idx = stratified_split(labels, 0.2, seed=0)  # fixed: comparable across seeds
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    norm = Normalisation((0.305,), (0.376,))
    train, val = (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])
    return _bundle("digits", cfg, seed, train, val, 10, norm, flip=False, requests=requests)


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


def fashion_mnist(cfg: DataConfig, seed: int, requests: InputRequests = InputRequests()) -> DataBundle:
    root = Path(cfg.root or DEBIAN_FASHION_ROOT)
    train = _idx_pair(root, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    test = _idx_pair(root, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    norm = Normalisation((0.286,), (0.353,))
    return _bundle("fashion_mnist", cfg, seed, train, test, 10, norm, flip=True, requests=requests)


def _cifar(
    cls_name: str, folder: str, num_classes: int, norm: Normalisation
) -> Callable[[DataConfig, int, InputRequests], DataBundle]:
    def load(cfg: DataConfig, seed: int, requests: InputRequests = InputRequests()) -> DataBundle:
        import torchvision.datasets as tvd

        root = Path(cfg.root or "data")
        if not (root / folder).is_dir():
            raise KdzooError(
                f"{cls_name} not found: expected {root / folder}/ (the python version); "
                f"kdzoo never downloads, put it there or set data.root"
            )
        make = getattr(tvd, cls_name)
        train, test = _read_cifar(make, root, root / folder)

        def as_tensor(ds):
            return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

        train_xy, test_xy = as_tensor(train), as_tensor(test)
        return _bundle(cls_name.lower(), cfg, seed, train_xy, test_xy, num_classes, norm, flip=True, requests=requests)

    return load


def _read_cifar(make: type, root: Path, folder: Path) -> tuple[Any, Any]:
    """torchvision's CIFAR train and test sets; a missing, unreadable or damaged batch file is one line
    naming it (torchvision checks every file's MD5 before unpickling any: it only says "corrupted")."""
    names = [name for name, _ in make.train_list + make.test_list] + [make.meta["filename"]]
    for name in names:
        if not (folder / name).is_file():  # also keeps a FIFO from blocking the checksum read
            raise KdzooError(f"{make.__name__}: {folder / name} is missing; {_FRESH_COPY.format(folder=folder)}")
    try:
        return make(str(root), train=True, download=False), make(str(root), train=False, download=False)
    except (RuntimeError, OSError) as exc:
        raise KdzooError(_cifar_damage(make, folder, exc)) from None


_FRESH_COPY = "replace {folder} with a complete copy of the python version (kdzoo never downloads)"


def _cifar_damage(make: type, folder: Path, exc: Exception) -> str:
    from torchvision.datasets.utils import check_integrity

    files = [*make.train_list, *make.test_list, (make.meta["filename"], make.meta["md5"])]
    for name, md5 in files:
        try:
            intact = check_integrity(str(folder / name), md5)
        except OSError as error:
            return f"{make.__name__}: {folder / name} cannot be read ({error.strerror or error})"
        if not intact:
            return (
                f"{make.__name__}: {folder / name} is damaged (truncated or changed: its MD5 is not the published "
                f"one); {_FRESH_COPY.format(folder=folder)}"
            )
    return f"{make.__name__}: {folder} cannot be read ({clip(str(exc))}); {_FRESH_COPY.format(folder=folder)}"


def synthetic(cfg: DataConfig, seed: int, requests: InputRequests = InputRequests()) -> DataBundle:
    """Random images whose class is a fixed pattern plus noise: learnable, instant, for tests."""
    gen = torch.Generator().manual_seed(1234)
    patterns = torch.rand(10, 3, 8, 8, generator=gen)
    labels = torch.arange(640) % 10
    images = (patterns[labels] + 0.3 * torch.randn(640, 3, 8, 8, generator=gen)).clamp(0, 1)
    norm = Normalisation((0.5,) * 3, (0.3,) * 3)
    train, val = (images[:512], labels[:512]), (images[512:], labels[512:])
    return _bundle("synthetic", cfg, seed, train, val, 10, norm, flip=False, requests=requests)


IMAGENET_NORM = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def image_folder(cfg: DataConfig, seed: int, requests: InputRequests = InputRequests()) -> DataBundle:
    """``data.root/train/<class>/*`` and ``data.root/val/<class>/*``, as torchvision's ImageFolder reads them."""

    root = Path(cfg.root or "data")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise KdzooError(f"imagefolder: {root / split}/ not found; set data.root to a folder with train/ and val/")
    own = InputPrep(
        IMAGENET_NORM.mean, IMAGENET_NORM.std, cfg.img_size, cfg.interpolation or "bilinear", cfg.crop_pct or 0.875
    )
    inputs = requests.resolve(own)
    train_tf, _ = image_transforms(cfg, inputs.render)
    train, val = _image_folder(root / "train", train_tf), _image_folder(root / "val", eval_transform(inputs.student))
    if train.classes != val.classes:
        raise KdzooError(f"imagefolder: train/ and val/ under {root} have different class folders")
    if len(train.classes) < 2:
        raise KdzooError(
            f"imagefolder: {root / 'train'} has {len(train.classes)} class folder ({', '.join(train.classes)}); "
            f"classification needs at least two, one folder per class"
        )
    contents = of_files(train.samples, val.samples)
    if cfg.train_limit is not None:
        from torch.utils.data import Subset

        train = Subset(train, balanced_subset(np.array(train.targets), cfg.train_limit).tolist())
    teacher_val = None
    if inputs.teacher != inputs.student:
        teacher_images = ImageFiles(val.classes, val.samples, eval_transform(inputs.teacher))
        teacher_val = LoaderBatches(teacher_images, cfg.eval_batch_size, False, cfg.num_workers, seed)
    return DataBundle(
        "imagefolder",
        LoaderBatches(train, cfg.batch_size, True, cfg.num_workers, seed, views=cfg.views, augment=cfg.augment),
        LoaderBatches(val, cfg.eval_batch_size, False, cfg.num_workers, seed),
        len(val.classes),
        3,
        contents,
        inputs=inputs,
        teacher_val=teacher_val,
    )


def image_transforms(cfg: DataConfig, prep: InputPrep) -> tuple[Callable, Callable]:
    """timm's training and evaluation transforms (``timm.data.create_transform``) for the ``data``
    settings, made at ``prep`` (size, interpolation, crop, mean and std): RandomResizedCrop, flip, colour
    jitter, auto-augment (RandAugment), random erasing; the evaluation's resize and centre crop. Their
    random draws (Python's, NumPy's and torch's RNGs) are seeded per sample by the loader, so a sample's
    augmentation does not depend on the process or worker that decodes it."""
    from timm.data import create_transform

    val = eval_transform(prep)
    if not cfg.augment:
        return val, val
    train = create_transform(
        input_size=prep.size,
        interpolation=prep.interpolation,
        mean=prep.mean,
        std=prep.std,
        is_training=True,
        scale=tuple(cfg.scale),
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter or 0.0,
        auto_augment=cfg.auto_augment,
        re_prob=cfg.re_prob,
        re_mode=cfg.re_mode,
    )
    return train, val


def eval_transform(prep: InputPrep) -> Callable:
    """timm's evaluation transform for one model's input: resize to size / crop_pct, centre crop, normalise."""
    from timm.data import create_transform

    return create_transform(
        input_size=prep.size,
        interpolation=prep.interpolation,
        mean=prep.mean,
        std=prep.std,
        crop_pct=prep.crop_pct,
        is_training=False,
    )


class ImageFiles(torch.utils.data.Dataset):
    """torchvision's ImageFolder, from a checked scan (:func:`scan_image_folder`): ``samples`` are
    (path, label) pairs in ImageFolder's order, decoded on access."""

    def __init__(self, classes: list[str], samples: list[tuple[str, int]], transform: Callable) -> None:
        self.classes, self.samples, self.transform = classes, samples, transform
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return self.transform(decode_image(path)), label


def _image_folder(folder: Path, transform: Callable) -> ImageFiles:
    classes, samples = scan_image_folder(folder)
    return ImageFiles(classes, samples, transform)


def scan_image_folder(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class folders and (image path, label) pairs under ``folder``, as torchvision's ImageFolder finds
    them (symlinks followed, same order), except that what it would get wrong is refused in one line:
    a folder reached twice (a symlink loop, or a link to a folder already read: its images would be
    read again under another label) and an image name that is not a regular file (a FIFO blocks the
    reader forever)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    classes = sorted(entry.name for entry in _entries(folder) if entry.is_dir())
    if not classes:
        raise KdzooError(f"imagefolder: {folder}: no class folder in it; put one folder of images per class there")
    seen = {_identity(folder): str(folder)}  # every folder read, by device and inode: a loop comes back to one
    samples, empty = [], []
    for label, name in enumerate(classes):
        images = _class_images(folder / name, seen, IMG_EXTENSIONS)
        samples.extend((path, label) for path in images)
        if not images:
            empty.append(name)
    if empty:
        raise KdzooError(
            f"imagefolder: {folder}: no images in class folder(s) {clip(', '.join(empty))} "
            f"(looked for {', '.join(IMG_EXTENSIONS)})"
        )
    return classes, samples


def _class_images(class_dir: Path, seen: dict[tuple[int, int], str], extensions: tuple[str, ...]) -> list[str]:
    """The image paths under one class folder, in ImageFolder's order: ``sorted(os.walk(...))``."""
    found: list[tuple[str, list[str]]] = []
    pending = [str(class_dir)]
    while pending:
        current = pending.pop()
        key = _identity(Path(current))
        if key in seen:
            raise KdzooError(
                f"imagefolder: {current} and {seen[key]} are the same folder (a symlink loop, or a second link to "
                f"a folder): its images would be read twice, under two labels or in a loop; remove the link"
            )
        seen[key] = current
        names = []
        for entry in _entries(Path(current)):
            if entry.is_dir():  # follows symlinks, as ImageFolder does
                pending.append(entry.path)
            elif entry.name.lower().endswith(extensions):
                _check_regular_file(entry)
                names.append(entry.name)
        found.append((current, sorted(names)))
    return [os.path.join(folder, name) for folder, names in sorted(found) for name in names]


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError as exc:
        raise KdzooError(f"imagefolder: cannot read folder {folder}: {exc.strerror or exc}") from None


def _identity(folder: Path) -> tuple[int, int]:
    try:
        info = folder.stat()
    except OSError as exc:
        raise KdzooError(f"imagefolder: cannot read folder {folder}: {exc.strerror or exc}") from None
    return info.st_dev, info.st_ino


def _check_regular_file(entry: os.DirEntry) -> None:
    if entry.is_file():  # follows symlinks: a link to an image is fine
        return
    try:
        mode = os.stat(entry.path).st_mode
    except OSError:
        kind = "a broken symlink"
    else:
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
    raise KdzooError(f"imagefolder: {entry.path} is {kind}, not an image file; remove it")


def decode_image(path: str):
    """An RGB image, or a one-line error naming the file that cannot be decoded."""
    from PIL import Image

    try:
        with open(path, "rb") as fh:
            return Image.open(fh).convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for unknown, truncated and broken files
        raise KdzooError(f"image {path} cannot be decoded ({clip(str(exc))}); remove or replace it") from None


CIFAR_NORM = Normalisation((0.507, 0.487, 0.441), (0.267, 0.256, 0.276))
DATASETS: dict[str, Callable[[DataConfig, int, InputRequests], DataBundle]] = {
    "digits": digits,
    "fashion_mnist": fashion_mnist,
    "cifar10": _cifar("CIFAR10", "cifar-10-batches-py", 10, CIFAR_NORM),
    "cifar100": _cifar("CIFAR100", "cifar-100-python", 100, CIFAR_NORM),
    "imagefolder": image_folder,
    "synthetic": synthetic,
}


#: one line per built-in dataset, for ``kdzoo list --datasets``
SUMMARIES = {
    "digits": "scikit-learn's 1,797 8x8 digit scans, embedded in kdzoo (the default)",
    "fashion_mnist": "Fashion-MNIST from its idx files under data.root (default: Debian's dataset-fashion-mnist)",
    "cifar10": "CIFAR-10, torchvision's python version under data.root",
    "cifar100": "CIFAR-100, torchvision's python version under data.root",
    "imagefolder": "data.root/train/<class>/* and data.root/val/<class>/*, through timm's transforms",
    "synthetic": "random class patterns plus noise: instant, for tests",
}
#: one line per reader prefix of data.name, for ``kdzoo list --datasets``
READER_SUMMARIES = {
    "hfds/NAME": "a Hugging Face dataset (Hub, cache or local folder) through timm's reader; pip install 'kdzoo[hf]'",
    "torch/NAME": "a torchvision dataset under data.root through timm's reader",
    "hfids/NAME": "a Hugging Face dataset read as a stream, by steps (data.steps_per_epoch)",
    "wds/PATH": "webdataset tar shards (KEY.jpg|png + KEY.cls), streamed by steps",
}


def load_data(
    cfg: DataConfig,
    seed: int,
    requests: InputRequests | None = None,
    plugins: Mapping[str, DatasetInfo] | None = None,
) -> DataBundle:
    """The dataset ``cfg`` names: a built-in one, or one a plugin registers (``plugins``; none given:
    the installed plugins'); ``requests``: what the student's and the teacher's inputs must be
    (:mod:`kdzoo.data.inputs`; none: the dataset's, for both)."""
    cfg.validate("data")  # a DataConfig made in code skips the loader's checks: a negative train_limit slices
    requests = requests or InputRequests()
    if cfg.name in DATASETS:  # a built-in name is the built-in dataset (kdzoo list --datasets says so)
        return DATASETS[cfg.name](cfg, seed, requests)
    if cfg.name.split("/", 1)[0].lower() in TIMM_READERS and "/" in cfg.name:
        return timm_dataset(cfg, seed, requests)
    if plugins is None:
        from kdzoo.registry import registry

        plugins = registry().datasets
    if cfg.name in plugins:
        return plugin_dataset(plugins[cfg.name], cfg, seed, requests)
    known = [*DATASETS, *sorted(plugins)]
    raise KdzooError(f"unknown dataset '{cfg.name}'{close_matches(cfg.name, known)}; known: {', '.join(known)}")


def plugin_dataset(info: DatasetInfo, cfg: DataConfig, seed: int, requests: InputRequests) -> DataBundle:
    """A plugin's dataset (:class:`~kdzoo.api.DatasetSplits` of PIL images and labels) made into batches
    as an image folder is: timm's transforms, each model's own input, a class-balanced ``train_limit``."""
    who = f"dataset '{info.name}' (plugin '{info.plugin}')" if info.plugin else f"dataset '{info.name}'"
    try:
        splits = info.load(cfg.root)
    except KdzooError:
        raise
    except Exception as exc:  # a plugin's bug: one line naming it, not its traceback
        raise KdzooError(f"{who} failed to load: {type(exc).__name__}: {clip(str(exc))}") from None
    if not isinstance(splits, DatasetSplits):
        raise KdzooError(
            f"{who}: its load must return kdzoo.DatasetSplits(train, val, num_classes), got {clip(repr(splits))}"
        )
    return image_sets(info.name, splits, cfg, seed, requests, who)


def image_sets(
    name: str,
    splits: DatasetSplits,
    cfg: DataConfig,
    seed: int,
    requests: InputRequests,
    who: str,
    contents: DataContents | None = None,
) -> DataBundle:
    """Map-style sets of (PIL image, label) as batches: timm's transforms, each model's own input, a
    class-balanced ``train_limit``, each process decoding its share (:class:`LoaderBatches`).
    ``contents``: digests of what the splits hold, where the source has them (else caches are keyed
    by the settings)."""
    for split in ("train", "val"):
        if len(getattr(splits, split)) == 0:
            raise KdzooError(f"{who}: its {split} split is empty")
    if splits.num_classes < 2:
        raise KdzooError(f"{who}: {splits.num_classes} class; classification needs at least two")
    c = splits.in_chans
    made = ImageTransforms.of(cfg, requests, c)
    train = Transformed(splits.train, made.train)
    if cfg.train_limit is not None:
        from torch.utils.data import Subset

        train = Subset(train, balanced_subset(np.array(train.targets), cfg.train_limit).tolist())
    teacher_val = None
    if made.teacher_val is not None:
        teacher_val = LoaderBatches(
            Transformed(splits.val, made.teacher_val), cfg.eval_batch_size, False, cfg.num_workers, seed
        )
    val = Transformed(splits.val, made.val)
    return DataBundle(
        name,
        LoaderBatches(train, cfg.batch_size, True, cfg.num_workers, seed, views=cfg.views, augment=cfg.augment),
        LoaderBatches(val, cfg.eval_batch_size, False, cfg.num_workers, seed),
        splits.num_classes,
        c,
        contents,
        inputs=made.inputs,
        teacher_val=teacher_val,
    )


@dataclass(frozen=True)
class ImageTransforms:
    """How decoded images become each model's inputs (timm's transforms): training's, drawn at the
    larger model's input; the student's evaluation; the teacher's own (``None``: the student's)."""

    inputs: RunInputs
    train: Callable
    val: Callable
    teacher_val: Callable | None

    @classmethod
    def of(cls, cfg: DataConfig, requests: InputRequests, in_chans: int) -> ImageTransforms:
        norm = IMAGENET_NORM if in_chans == 3 else Normalisation((0.5,) * in_chans, (0.5,) * in_chans)
        own = InputPrep(norm.mean, norm.std, cfg.img_size, cfg.interpolation or "bilinear", cfg.crop_pct or 0.875)
        inputs = requests.resolve(own)
        train, _ = image_transforms(cfg, inputs.render)
        teacher_val = eval_transform(inputs.teacher) if inputs.teacher != inputs.student else None
        return cls(inputs=inputs, train=train, val=eval_transform(inputs.student), teacher_val=teacher_val)


#: timm's dataset readers (``timm.data.create_dataset``), by the prefix of ``data.name``
TIMM_READERS = ("hfds", "hfids", "wds", "tfds", "torch")
STREAMING_READERS = ("hfids", "wds", "tfds")


def streamed_dataset(cfg: DataConfig, seed: int, requests: InputRequests) -> DataBundle:
    """``wds/PATH`` (webdataset tar shards, :func:`~kdzoo.data.stream_sources.shard_files`) and
    ``hfids/NAME`` (a Hugging Face dataset read as a stream) trained by steps in one global order
    (:mod:`kdzoo.data.stream_batches`); the validation split is read whole, in stored order."""
    from kdzoo.data.stream_batches import StreamBatches
    from kdzoo.data.stream_sources import StreamSource

    prefix, _, path = cfg.name.partition("/")
    where = f"data.name '{clip(cfg.name)}'"
    for key, why in (
        ("train_limit", "a stream has no class-balanced subset"),
        ("views", "a stream's samples are not revisited by place"),
    ):
        if getattr(cfg, key):
            raise KdzooError(f"{where}: data.{key} is not available for a streamed dataset ({why}); unset it")
    sources: list[StreamSource] = [
        _stream_source(prefix.lower(), path, split, cfg, where) for split in (cfg.train_split, cfg.val_split)
    ]
    train_source, val_source = sources
    made = ImageTransforms.of(cfg, requests, 3)
    workers = cfg.num_workers or min(4, os.cpu_count() or 1)

    def evaluation(transform: Callable) -> StreamBatches:
        return StreamBatches(val_source, transform, cfg.eval_batch_size, False, workers, seed)

    train = StreamBatches(
        train_source,
        made.train,
        cfg.batch_size,
        True,
        workers,
        seed,
        steps=cfg.steps_per_epoch,
        partitions=cfg.stream_partitions,
        shuffle_buffer=cfg.shuffle_buffer,
    )
    classes = max(train_source.num_classes, val_source.num_classes)
    teacher_val = evaluation(made.teacher_val) if made.teacher_val is not None else None
    return DataBundle(
        cfg.name, train, evaluation(made.val), classes, 3, None, inputs=made.inputs, teacher_val=teacher_val
    )


def _stream_source(prefix: str, path: str, split: str, cfg: DataConfig, where: str):
    from kdzoo.data.stream_sources import HubStream, TarShards, shard_files

    if prefix == "wds":
        return TarShards(f"{cfg.name}:{split}", shard_files(Path(path).expanduser(), split, where))
    if prefix == "hfids":
        try:
            return HubStream(f"{cfg.name}:{split}", path, split, cfg.root)
        except ImportError as exc:
            raise KdzooError(
                f"{where} reads through a library that is not installed ({exc.name or exc}): pip install 'kdzoo[hf]'"
            ) from None
        except KdzooError:
            raise
        except Exception as exc:  # the datasets library's own errors: no such dataset or split, offline
            raise KdzooError(
                f"{where}: cannot stream split '{split}' ({type(exc).__name__}: {clip(first_line(exc), 200)}); check "
                f"the name, data.train_split / data.val_split and data.root (offline, HF_HUB_OFFLINE=1: the dataset "
                f"must be a local folder or in the Hugging Face cache)"
            ) from None
    raise KdzooError(
        f"{where}: timm's {prefix}/ reader (TensorFlow datasets) is not supported; use hfids/, wds/ or hfds/"
    )


def timm_dataset(cfg: DataConfig, seed: int, requests: InputRequests) -> DataBundle:
    """``hfds/NAME`` (a Hugging Face dataset: on the Hub, in the cache, or a local folder of its files)
    and ``torch/NAME`` (torchvision's) through timm's ``create_dataset``, with ``data.train_split`` /
    ``data.val_split``; timm reads them, kdzoo makes the images inputs as for an image folder."""
    prefix = cfg.name.split("/", 1)[0].lower()
    if prefix in STREAMING_READERS:
        return streamed_dataset(cfg, seed, requests)
    train, val = (
        _timm_split(cfg, split, training) for split, training in ((cfg.train_split, True), (cfg.val_split, False))
    )
    splits = DatasetSplits(train=TimmImages(train), val=TimmImages(val), num_classes=_classes_of(train, val))
    fingerprints = [
        getattr(getattr(getattr(d, "reader", None), "dataset", None), "_fingerprint", None) for d in (train, val)
    ]
    contents = None
    if all(isinstance(f, str) for f in fingerprints):  # Hugging Face's digest of what a split holds
        contents = DataContents(lambda: str(fingerprints[0]), lambda: str(fingerprints[1]))
    return image_sets(cfg.name, splits, cfg, seed, requests, f"data.name '{cfg.name}'", contents)


def _timm_split(cfg: DataConfig, split: str, training: bool):
    from timm.data import create_dataset

    try:
        return create_dataset(cfg.name, root=cfg.root, split=split, is_training=training, download=False)
    except ImportError as exc:
        raise KdzooError(
            f"data.name '{clip(cfg.name)}' reads through a library that is not installed ({exc.name or exc}): "
            f"pip install 'kdzoo[hf]'"
        ) from None
    except KdzooError:
        raise
    except Exception as exc:  # the readers' own errors: no such dataset or split, offline, unreadable files
        problem = f"{type(exc).__name__}: {clip(first_line(exc), 200)}"
        raise KdzooError(
            f"data.name '{clip(cfg.name)}': cannot read split '{split}' ({problem}); "
            f"check the name, data.train_split / data.val_split and data.root (offline, HF_HUB_OFFLINE=1: the "
            f"dataset must be a local folder or in the Hugging Face cache)"
        ) from None


class TimmImages(torch.utils.data.Dataset):
    """A timm dataset (no transform: (PIL image, label)) with ``targets``, its labels in order."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index]

    @functools.cached_property
    def targets(self) -> list[int]:
        return labels_of(self.dataset)


def labels_of(dataset) -> list[int]:
    """The labels of a dataset of (image, label) in order, without decoding an image where it says them:
    its ``targets`` (torchvision's), a timm reader's Hugging Face column or samples; else read one by one."""
    own = getattr(dataset, "targets", None)
    if own is not None:
        return [int(t) for t in own]
    reader = getattr(dataset, "reader", None)
    rows = getattr(reader, "dataset", None)
    if rows is not None and getattr(reader, "label_key", None) in getattr(rows, "column_names", ()):
        return [int(t) for t in rows[reader.label_key]]  # a Hugging Face dataset: the column, no image decoded
    samples = getattr(reader, "samples", None)
    if samples is not None:
        return [int(t) for _, t in samples]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def _classes_of(train, val) -> int:
    for dataset in (train, val):
        mapping = getattr(getattr(dataset, "reader", None), "class_to_idx", None) or getattr(
            dataset, "class_to_idx", None
        )
        if mapping:
            return len(mapping)
    return max(TimmImages(train).targets) + 1


class Transformed(torch.utils.data.Dataset):
    """A dataset of (image, label) with ``transform`` applied to the image; ``targets``: the labels in
    order, the dataset's own when it has them (else read once, sample by sample)."""

    def __init__(self, dataset, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return self.transform(image), int(label)

    @functools.cached_property
    def targets(self) -> list[int]:
        return labels_of(self.dataset)
