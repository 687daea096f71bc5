"""Batches from a streamed dataset (:mod:`kdzoo.data.stream_sources`), trained by steps, in one
global order whatever the number of processes and loader workers, and resumable mid-epoch.

The order: the stream is read as ``P`` partitions (``data.stream_partitions``). In epoch e each
partition reads its share of the shards (a seeded permutation of them, ``order[p::P]``; again,
permuted anew, when they run out) through a seeded shuffle buffer, and global batch k takes the next
``batch_size / P`` samples of every partition, partition by partition. A sample's augmentation is
seeded by (seed, epoch, its place in the epoch). So:

* under torchrun, process r of W reads only partitions ``r*P/W .. (r+1)*P/W - 1``, which are
  exactly its contiguous share of every global batch (what :func:`~kdzoo.data.batches.shard` keeps):
  N processes train what one trains for the same ``P``, and no process reads another's shards;
* each of a process's loader workers decodes every ``num_workers``-th batch (the others' samples
  pass through its buffer undecoded), so the loader hands the batches over in order;
* a run resumed at batch k reads the samples before it without decoding them, and continues as if
  it had never stopped.

This is the kind of fixed-partition order MosaicML's streaming calls canonical nodes; kdzoo writes
it itself because the exactness above is what its resume and its N-processes-equal-one rest on.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from kdzoo.data.batches import (
    Batches,
    DistInfo,
    evaluation_batches,
    from_worker,
    leave_stop_signals_to_the_trainer,
    sample_seed,
    seeded,
)
from kdzoo.data.stream_sources import RawSample, StreamSource, decode
from kdzoo.errors import KdzooError


def partition_stream(
    source: StreamSource, part: int, parts: int, seed: int, epoch: int, buffer: int
) -> Iterator[RawSample]:
    """Partition ``part`` of ``parts`` in ``epoch``, endless: its shards in a seeded order, round after
    round, through a seeded shuffle buffer of ``buffer`` samples (0: in stored order)."""

    def shards() -> Iterator[RawSample]:
        for round_ in itertools.count():
            gen = torch.Generator().manual_seed((seed * 100_003 + epoch) * 1_009 + round_)
            mine = torch.randperm(source.shards, generator=gen).tolist()[part::parts]
            empty = True
            for shard in mine:
                for raw in source.samples(shard):
                    empty = False
                    yield raw
            if empty:
                raise KdzooError(f"data.name '{source.name}': partition {part} of {parts} has no samples")

    samples = shards()
    if buffer <= 1:
        yield from samples
        return
    gen = torch.Generator().manual_seed(((seed * 100_003 + epoch) * 1_009 + part) * 7 + 1)
    pool = list(itertools.islice(samples, buffer))
    for incoming in samples:
        j = int(torch.randint(len(pool), (1,), generator=gen))
        yield pool[j]
        pool[j] = incoming


@dataclass(frozen=True)
class _Plan:
    """One pass: the epoch, its batches to yield, and this process's place."""

    epoch: int
    batches: range
    info: DistInfo
    with_index: bool


class _Pass(IterableDataset):
    """The batches of one planned pass, made in a loader worker (or the training process)."""

    def __init__(self, owner: StreamBatches, plan: _Plan) -> None:
        self.owner, self.plan = owner, plan

    def __iter__(self) -> Iterator:
        worker = get_worker_info()
        workers, me = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        owner, plan = self.owner, self.plan
        for k, parts in owner.raw_batches(plan.epoch, plan.batches.stop, plan.info):
            if k < plan.batches.start or (k - plan.batches.start) % workers != me:
                continue  # read, not decoded: another worker's batch, or one before a resumed start
            yield owner.collate(plan, k, parts)


class StreamBatches(Batches):
    """Training batches (by steps: ``steps`` per epoch) or evaluation batches (the whole split once,
    in stored order) of a :class:`~kdzoo.data.stream_sources.StreamSource`."""

    def __init__(
        self,
        source: StreamSource,
        transform: Callable,
        batch_size: int,
        train: bool,
        num_workers: int,
        seed: int = 0,
        steps: int | None = None,
        partitions: int = 0,
        shuffle_buffer: int = 0,
    ) -> None:
        self.source, self.transform, self.batch_size, self.train = source, transform, batch_size, train
        self.num_workers, self.seed = num_workers, seed
        self.partitions, self.shuffle_buffer = partitions, shuffle_buffer
        self._size = source.size() if train else source.counted
        if train and steps is None:
            if self._size is None:
                raise KdzooError(
                    f"data.name '{source.name}': the stream does not state how many samples it has; "
                    f"set data.steps_per_epoch (training steps per epoch)"
                )
            steps = max(1, self._size // batch_size)
        self.steps = steps if train else math.ceil((self._size or 0) / batch_size)
        super().__init__()

    def __len__(self) -> int:
        return int(self.steps or 0)

    @property
    def num_samples(self) -> int:
        """The samples in the source where it states them, else those an epoch trains on."""
        return self._size if self._size is not None else len(self) * self.batch_size

    def class_labels(self) -> Tensor | None:
        labels = self.source.labels() if self.train else None
        return None if labels is None else torch.tensor(labels, dtype=torch.long)

    @property
    def deterministic(self) -> bool:
        return not self.train

    def parts_for(self, info: DistInfo) -> int:
        """The run's partitions (0 in the config: one per process), checked against the batch and
        the processes: each process reads whole partitions, each batch takes equally from each."""
        world = info.world if info.enabled else 1
        parts = (self.partitions or world) if self.train else 1
        if parts % world:
            raise KdzooError(
                f"data.stream_partitions={parts} does not split over {world} processes; use a multiple of "
                f"{world} (runs with the same value train alike on any number of processes dividing it)"
            )
        if self.train and self.batch_size % parts:
            raise KdzooError(f"data.batch_size={self.batch_size} does not split over data.stream_partitions={parts}")
        if parts > self.source.shards:
            raise KdzooError(
                f"data.name '{self.source.name}' has {self.source.shards} shard(s), fewer than the "
                f"{parts} stream partitions; lower data.stream_partitions or split the data into more shards"
            )
        return parts

    def raw_batches(self, epoch: int, stop: int, info: DistInfo) -> Iterator[tuple[int, list[RawSample]]]:
        """Batches 0 .. ``stop - 1`` of ``epoch`` as this process's undecoded samples."""
        if not self.train:  # the whole split in stored order, whole batches
            stream = (raw for shard in range(self.source.shards) for raw in self.source.samples(shard))
            for k in range(stop):
                batch = list(itertools.islice(stream, self.batch_size))
                if not batch:
                    return
                yield k, batch
            return
        parts = self.parts_for(info)
        world, rank = (info.world, info.rank) if info.enabled else (1, 0)
        per_process = parts // world
        take = self.batch_size // parts
        streams = [
            partition_stream(self.source, p, parts, self.seed, epoch, self.shuffle_buffer)
            for p in range(rank * per_process, (rank + 1) * per_process)
        ]
        for k in range(stop):
            yield k, [raw for stream in streams for raw in itertools.islice(stream, take)]

    def collate(self, plan: _Plan, k: int, samples: list[RawSample]) -> tuple:
        """Decode and transform a batch's samples; each augmentation seeded by the sample's place in
        the epoch's global order (this process's share of batch k starts at rank * its size)."""
        first = k * self.batch_size + (plan.info.rank * len(samples) if plan.info.enabled else 0)
        xs = [
            seeded(sample_seed(self.seed, plan.epoch, first + i), self.transform, decode(raw, self.source.name))
            for i, raw in enumerate(samples)
        ]
        x, y = torch.stack(xs), torch.tensor([raw.label for raw in samples], dtype=torch.long)
        ids = [raw.sample_id for raw in samples]
        index = torch.tensor(ids, dtype=torch.long) if all(i is not None for i in ids) else None
        return (x, y, index) if plan.with_index else (x, y)

    def epoch(self, epoch: int, start: int = 0, with_index: bool = False) -> Iterator:
        return self._batches(_Plan(epoch, range(start, len(self)), self.shard_info, with_index))

    def evaluation_share(self, info: DistInfo) -> Iterator:
        # whole batches of the split for this process: shard_info (a share of each batch) does not apply
        return self._batches(_Plan(0, evaluation_batches(len(self), info), DistInfo(), False))

    def _batches(self, plan: _Plan) -> Iterator:
        if self.train:
            self.parts_for(plan.info)  # one line before any worker starts
        loader = DataLoader(
            _Pass(self, plan),
            batch_size=None,
            num_workers=min(self.num_workers, max(1, len(plan.batches))),
            worker_init_fn=leave_stop_signals_to_the_trainer,
        )
        batches = iter(loader)
        try:
            for batch in batches:
                yield tuple(t.to(self.device, non_blocking=True) if isinstance(t, Tensor) else t for t in batch)
        except KdzooError as exc:
            raise from_worker(exc) from None
        finally:  # a pass left early (an error, a stop) ends its workers now: they ignore SIGTERM at exit
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
