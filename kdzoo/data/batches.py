"""Batch sources: what the engine iterates over, each with its device and its process's share.

In-memory image sets (:class:`TensorBatches`) are held at native resolution and turned into model
inputs a batch at a time (resize, normalise, augment), fast on CPU and GPU alike; file-backed sets
go through a DataLoader (:class:`LoaderBatches`); a user's own loader is wrapped as it is
(:class:`IterableBatches`). Batch order and augmentation draw from a generator seeded by (seed,
epoch), so an epoch is the same whether the run was interrupted before it or not.

Under torchrun every process reads its contiguous share of each global batch of one global order
(a file-backed set decodes that share only), and evaluates a contiguous run of the validation set's
batches (:meth:`Batches.evaluation_share`), so N processes compute what one computes.
"""

from __future__ import annotations

import abc
import atexit
import itertools
import math
import multiprocessing.util  # noqa: F401  (its exit handler registers on import; ours, registered later, runs first)
import os
import random
import re
import signal
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from kdzoo.data.contents import DataContents
from kdzoo.data.inputs import RunInputs
from kdzoo.errors import KdzooError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place among the run's processes (torchrun): ``grouped`` when a process group
    exists, which a torchrun launch of one process has too (so one GPU runs the NCCL path)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    grouped: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1 or self.grouped

    @property
    def main(self) -> bool:
        return self.rank == 0


def shard(x: Tensor, info: DistInfo) -> Tensor:
    """This process's contiguous share of a global batch."""
    if not info.enabled:
        return x
    if len(x) % info.world:
        raise ValueError(f"a batch of {len(x)} does not split evenly over {info.world} processes")
    size = len(x) // info.world
    return x[info.rank * size : (info.rank + 1) * size]


@dataclass(frozen=True)
class Normalisation:
    mean: tuple[float, ...]
    std: tuple[float, ...]


class Batches(abc.ABC):
    """What the engine needs of a batch source: its batches per epoch, its device, and this process's
    share of each batch."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.shard_info = DistInfo()  # set by the engine under torchrun

    @abc.abstractmethod
    def __len__(self) -> int:
        """Batches per epoch."""

    @property
    @abc.abstractmethod
    def num_samples(self) -> int:
        """Samples in the set."""

    @abc.abstractmethod
    def epoch(self, epoch: int, start: int = 0, with_index: bool = False) -> Iterator:
        """The batches of ``epoch`` from batch ``start`` on: ``(x, y)``, or ``(x, y, indices)`` with
        ``with_index``."""

    def to(self, device: torch.device) -> Batches:
        self.device = torch.device(device)
        return self

    def class_labels(self) -> Tensor | None:
        """Every sample's class in dataset order (what batch indices index), when the data says so."""
        return None

    def view_of(self, epoch: int) -> int:
        """Which of each sample's fixed augmented views ``epoch`` trains on (0 without fixed views)."""
        return 0

    def evaluation_share(self, info: DistInfo) -> Iterator:
        """This process's part of an evaluation pass over the set: ``(x, y)`` of a contiguous run of the
        batches one process evaluates (:func:`evaluation_batches`). Whole batches, so every sample is
        scored in the batch one process scores it in (the same numbers, to the bit); none is padded or
        repeated, so the processes' summed counts are one process's counts."""
        share = evaluation_batches(len(self), info)
        return itertools.islice(self.epoch(0, share.start), len(share))


def evaluation_batches(batches: int, info: DistInfo) -> range:
    """Which of a set's ``batches`` this process evaluates: a contiguous run, the runs of the processes
    differing in length by one batch at most (a process may get none when there are fewer batches
    than processes; its counts are then zero)."""
    if not info.enabled:
        return range(batches)
    return range(info.rank * batches // info.world, (info.rank + 1) * batches // info.world)


def _as_labels(values) -> Tensor | None:
    return None if values is None else torch.as_tensor(values).long().cpu()


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device`` without the host waiting: from pinned memory, asynchronously, on CUDA
    (a copy from ordinary memory would make the host wait for the GPU's queued work each step)."""
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

    def class_labels(self) -> Tensor:
        return self.labels.cpu()

    def epoch(self, epoch: int, start: int = 0, with_index: bool = False) -> Iterator:
        """The batches of one epoch, from batch ``start`` on; they depend only on (seed, epoch).

        ``with_index`` adds each batch's sample indices (for per-sample caches).
        """
        return self._batches(epoch, range(start, len(self)), self.shard_info, with_index)

    def evaluation_share(self, info: DistInfo) -> Iterator:
        # whole batches of the set for this process: shard_info (a share of each batch) does not apply
        return self._batches(0, evaluation_batches(len(self), info), DistInfo(), with_index=False)

    def _batches(self, epoch: int, batches: range, info: DistInfo, with_index: bool) -> Iterator:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        stored = to_device(order, self.images.device)  # the order where the images are, once an epoch
        for b in range(batches.stop):
            batch = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx, rows = order[batch], stored[batch]
            params = self._draw(idx, gen, epoch)  # drawn for skipped batches too: later ones stay the same
            if b < batches.start:
                continue
            if info.enabled:  # drawn for the global batch, applied to this process's share
                idx, rows = shard(idx, info), shard(rows, info)
                params = None if params is None else tuple(shard(p, info) for p in params)
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
            mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (self.norm.mean, self.norm.std))
            self._norm_tensors[device] = (mean, std)
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
    """Train and validation batches plus what the models must be built for; ``contents``: digests of
    what the splits hold (``None`` where kdzoo cannot see it: a user's own loader)."""

    name: str
    train: Batches
    val: Batches
    num_classes: int
    in_chans: int
    contents: DataContents | None = None
    #: each model's input (:mod:`kdzoo.data.inputs`): ``train`` is drawn at ``inputs.render``, ``val`` is
    #: the student's; ``None``: one input for both (a user's own loader)
    inputs: RunInputs | None = None
    teacher_val: Batches | None = None  #: the validation set as the teacher's own transform makes it

    @property
    def teacher_val_batches(self) -> Batches:
        """The validation batches the configured teacher is scored on."""
        return self.teacher_val if self.teacher_val is not None else self.val


class LoaderBatches(Batches):
    """Mini-batches from a file-backed dataset through a DataLoader (workers decode images).

    The order comes from a generator seeded by (seed, epoch), like :class:`TensorBatches`, and each
    sample's augmentation from a seed of (seed, epoch, sample): an epoch's batches depend neither on
    what ran before it nor on which process or worker decodes a sample. So each process decodes only
    its share of every global batch (:class:`GlobalBatchSampler`), a resumed epoch starts at its
    batch without decoding the ones before, and the workers persist across epochs.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        train: bool,
        num_workers: int,
        seed: int = 0,
        views: int = 0,
        augment: bool = True,
    ):
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        # 0 means "choose": file-backed images need decoding workers to keep up with the model
        self.num_workers = num_workers or min(4, os.cpu_count() or 1)
        self.seed = seed
        #: more than 0: each sample's augmentation is one of ``views`` fixed draws, epoch e using e % views
        #: (seeded by the view rather than the epoch): what a teacher-output cache can hold
        self.views = views if train and augment else 0
        self.augment = augment
        self._loader: DataLoader | None = None  # made at the first epoch, then kept: its workers persist
        self._loader_busy = False  # an epoch is iterating the kept loader (see _batches)
        super().__init__()

    def __len__(self) -> int:
        return batches_per_epoch(len(self.dataset), self.batch_size, self.train)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def class_labels(self) -> Tensor | None:
        return _as_labels(getattr(self.dataset, "targets", None))

    @property
    def deterministic(self) -> bool:
        """Whether a sample looks the same in every epoch (no augmentation, or a fixed set of views)."""
        return not (self.train and self.augment) or self.views > 0

    def view_of(self, epoch: int) -> int:
        return epoch % self.views if self.views else 0

    def view(self, idx: Tensor, view: int) -> Tensor:
        """The model input of samples ``idx`` in fixed view ``view`` (what training sees in the epochs
        that use it), decoded here."""
        items = _WithIndex(self.dataset, self.seed, self.views)
        return torch.stack([items[(int(i), view)][0] for i in idx])

    def epoch(self, epoch: int, start: int = 0, with_index: bool = False) -> Iterator:
        """The batches of one epoch from batch ``start`` on; ``with_index`` adds each batch's sample indices."""
        return self._batches(epoch, range(start, len(self)), self.shard_info, with_index)

    def evaluation_share(self, info: DistInfo) -> Iterator:
        # whole batches of the set for this process: shard_info (a share of each batch) does not apply
        return self._batches(0, evaluation_batches(len(self), info), DistInfo(), with_index=False)

    def _batches(self, epoch: int, batches: range, info: DistInfo, with_index: bool) -> Iterator:
        # Two epochs iterated at once (a second pass started inside another) cannot share one loader:
        # starting the second would reset the first's. The second gets a loader of its own, which
        # yields the same batches (a sample's augmentation does not depend on the worker decoding it).
        kept = not self._loader_busy
        loader = self._kept_loader() if kept else self._new_loader(persistent=False)
        assert isinstance(loader.batch_sampler, GlobalBatchSampler)
        loader.batch_sampler.plan(epoch, batches, info)
        self._loader_busy = self._loader_busy or kept
        try:
            for x, y, idx in loader:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                yield (x, y, idx) if with_index else (x, y)
        except KdzooError as exc:
            raise from_worker(exc) from None
        finally:
            if kept:
                self._loader_busy = False

    def _kept_loader(self) -> DataLoader:
        pin = self.device.type == "cuda"
        if self._loader is None or self._loader.pin_memory != pin:  # made again for a device moved to
            self.release_workers()
            self._loader = self._new_loader(persistent=True)
            _KEEPING_WORKERS.add(self)
        return self._loader

    def release_workers(self) -> None:
        """End the workers the kept loader holds between epochs (a later epoch starts new ones)."""
        loader, self._loader = self._loader, None
        shutdown = getattr(getattr(loader, "_iterator", None), "_shutdown_workers", None)
        if shutdown is not None:  # a pass still iterating it holds the loader: end its workers anyway
            shutdown()

    def _new_loader(self, persistent: bool) -> DataLoader:
        return DataLoader(
            _WithIndex(self.dataset, self.seed, self.views),
            batch_sampler=GlobalBatchSampler(len(self.dataset), self.batch_size, self.train, self.seed),
            num_workers=self.num_workers,
            persistent_workers=persistent and self.num_workers > 0,
            pin_memory=self.device.type == "cuda",
            # the workers' base seed is drawn from this generator, not from the global RNG (which would
            # then differ from a run without workers); it seeds nothing a batch depends on (_WithIndex)
            generator=torch.Generator().manual_seed(self.seed),
            worker_init_fn=leave_stop_signals_to_the_trainer,
        )


_KEEPING_WORKERS: weakref.WeakSet[LoaderBatches] = weakref.WeakSet()


@atexit.register
def _end_kept_workers() -> None:
    """At exit, end the workers every kept loader holds. multiprocessing's exit handler would end them
    with SIGTERM, which they ignore (:func:`leave_stop_signals_to_the_trainer`), and then wait for them
    forever; the loader ends them by telling them to stop. Registered after multiprocessing's handler
    (imported above), it runs before it."""
    for batches in list(_KEEPING_WORKERS):
        batches.release_workers()


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """The samples one process loads, as a DataLoader's ``batch_sampler``: of every batch in the planned
    range (:meth:`plan`) of the epoch's global order, this process's contiguous share (what
    :func:`shard` keeps of a global batch), so no process decodes another's samples and batches before
    the range are never read. The global order is the one a shuffling ``DataLoader`` with a generator
    seeded by (seed, epoch) gives, which one process has always trained on.
    Each sample is handed over as ``(index, epoch)``: :class:`_WithIndex` seeds its augmentation."""

    def __init__(self, samples: int, batch_size: int, shuffle: bool, seed: int):
        self.samples, self.batch_size, self.shuffle, self.seed = samples, batch_size, shuffle, seed
        self.epoch, self.batches, self.info = 0, range(0), DistInfo()

    def plan(self, epoch: int, batches: range, info: DistInfo) -> None:
        """What the next pass yields; set before the loader is iterated (it reads the plan then, in
        the training process: the workers only receive the indices)."""
        self.epoch, self.batches, self.info = epoch, batches, info

    def order(self, epoch: int) -> Tensor:
        """Every sample of ``epoch`` in the order batches take them."""
        if not self.shuffle:
            return torch.arange(self.samples)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        # a DataLoader draws its workers' base seed from its generator before its sampler draws the
        # permutation: drawn here too, so the order stays what a shuffling DataLoader gave
        torch.empty((), dtype=torch.int64).random_(generator=gen)
        return torch.randperm(self.samples, generator=gen)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, batches, info = self.epoch, self.batches, self.info
        order = self.order(epoch)
        for b in batches:
            share = shard(order[b * self.batch_size : (b + 1) * self.batch_size], info)
            yield [(index, epoch) for index in share.tolist()]


def from_worker(exc: KdzooError) -> KdzooError:
    """A KdzooError raised in a loader worker arrives wrapped in that worker's traceback: its one line."""
    return KdzooError(re.sub(r"^(kdzoo\.\w+\.)?KdzooError: ", "", str(exc).strip().splitlines()[-1]))


def leave_stop_signals_to_the_trainer(_worker_id: int) -> None:
    """In each loader worker: ignore SIGINT and SIGTERM. Ctrl-C, ``timeout`` and schedulers signal a
    job's whole process group; a worker killed by it would take the training process down mid-step
    (the loader raises from its SIGCHLD handler) before it can checkpoint. The training process
    handles the signal (:class:`~kdzoo.engine.signals.StopRequests`) and then shuts its workers
    down; a worker whose training process died exits by itself (the loader's watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


VIEW_SEED_OFFSET = 1_000_000  # a fixed view's draw is never an epoch's own (runs without views differ)


def sample_seed(seed: int, drawn: int, index: int) -> int:
    """The seed of a sample's random augmentation: the run's seed, the epoch (or fixed view) drawn
    for, and the sample's place."""
    return ((seed * 100_003 + drawn) * 1_000_003 + index) % 2**63


def seeded(seed: int, fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` with torch's, Python's and NumPy's random streams seeded by ``seed``, and the
    process's own streams put back after (without workers this runs in the training process):
    torchvision's RandomChoice and timm's crops and RandAugment draw from Python's; timm's
    RandAugment picks its operations with NumPy's."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            return fn(*args)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class _WithIndex(torch.utils.data.Dataset):
    """A map-style dataset read by ``(index, epoch)`` keys whose items also carry their index (the
    position per-sample state uses). A sample's random augmentation is seeded by (seed, epoch, index):
    the same whichever process or worker decodes it and whatever that worker decoded before, so N
    processes augment as one does, a resumed epoch needs none of the samples before it, and
    workers can persist across epochs."""

    def __init__(self, dataset, seed: int = 0, views: int = 0):
        self.dataset, self.seed, self.views = dataset, seed, views

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        # with fixed views the draw is the view's (epoch e shows view e % views): the same every time
        drawn = epoch % self.views + VIEW_SEED_OFFSET if self.views else epoch
        x, y = seeded(sample_seed(self.seed, drawn, index), self.dataset.__getitem__, index)
        return x, y, index


class IterableBatches(Batches):
    """Wraps a user's DataLoader (or any sized iterable of (images, labels) or (images, labels,
    sample indices)) for the engine; under torchrun, give it a DistributedSampler (it is not sharded
    again here)."""

    def __init__(self, loader):
        self.loader = loader
        super().__init__()

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        dataset = getattr(self.loader, "dataset", None)
        return len(dataset) if dataset is not None else len(self.loader)

    def class_labels(self) -> Tensor | None:
        return _as_labels(getattr(getattr(self.loader, "dataset", None), "targets", None))

    def epoch(self, epoch: int, start: int = 0, with_index: bool = False) -> Iterator:
        """The loader's batches from batch ``start`` on; ``with_index`` adds the sample indices a batch
        carries as its third element (``None`` for a batch of (images, labels) only)."""
        set_epoch = getattr(getattr(self.loader, "sampler", None), "set_epoch", None)
        if set_epoch is not None:  # DistributedSampler reshuffles per epoch
            set_epoch(epoch)
        for x, y, *rest in itertools.islice(self.loader, start, None):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield (x, y, rest[0] if rest else None) if with_index else (x, y)

    def evaluation_share(self, info: DistInfo) -> Iterator:
        """A loader with a ``DistributedSampler`` yields this process's share already (counted as it is:
        that sampler repeats samples to split a set evenly); any other loader is shared by whole
        batches, as kdzoo's own sets are (each process still loads the batches before its run)."""
        if isinstance(getattr(self.loader, "sampler", None), DistributedSampler):
            return self.epoch(0)
        return super().evaluation_share(info)
