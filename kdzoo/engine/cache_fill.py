"""The teacher-output cache filled by a run's processes together (under torchrun).

The processes that see the same cache folder (one node's, or every node's on a shared filesystem;
found by each leaving a mark in the folder) fill it as one: the lowest of them takes the entry's lock
(another run waits), records the teacher's accuracy and begins the fill (its files, their size said
first, or a killed fill's record of the batches done); each then computes every N-th batch still to
do (the list read by every process before any marks a batch done), marking each done once its
outputs are on disk; the lowest ends it. A kill at any point leaves a
record the next fill, on any number of processes, goes on from. Nodes with caches of their own each
fill theirs, at the same time.
"""

from __future__ import annotations

import contextlib
import datetime
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from kdzoo.api import KdzooError, Taps
from kdzoo.data import DistInfo
from kdzoo.engine import locking
from kdzoo.engine.distributed import broadcast_from_main
from kdzoo.engine.extract import FeatureExtractor
from kdzoo.engine.teacher_cache import TeacherOutputCache


def fill_together(
    cache: TeacherOutputCache,
    taps: Taps,
    extractor: FeatureExtractor,
    remember_accuracy: Callable[[], None],
    batch_size: int,
    device: torch.device,
    say: Callable[[str], None],
    info: DistInfo,
) -> None:
    """Every process calls this together. When it returns, ``cache`` holds the outputs of ``taps``
    (written by the processes sharing its folder) and the teacher's accuracy."""
    # its own group, without a practical time limit: the teacher's evaluation and a large fill can take
    # longer than the run's process group allows a collective
    waiting = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=30))
    lock = contextlib.ExitStack()
    try:
        peers = _sharing(cache.root, info, waiting)
        member, members = peers.index(info.rank), len(peers)

        def begin() -> None:
            if member == 0:
                lock.enter_context(locking.writing(cache.root, lambda: say(_another_run(cache))))
                if not cache.info_file.is_file():
                    say(f"teacher-output cache: filling {cache.root} ({cache.why_new()}), {members} processes")
                if cache.teacher_metrics() is None:
                    remember_accuracy()
                if not cache.select(taps):
                    cache.begin_fill(extractor, batch_size, device, say)

        mine: list[int] = []

        def plan() -> None:  # every process reads the batches to do before any marks one done
            if not cache.select(taps):
                mine.extend(cache.batches_to_do(batch_size)[member::members])

        def share() -> None:
            if mine:
                cache.fill_share(extractor, batch_size, device, mine)

        def end() -> None:
            if member == 0 and not cache.select(taps):
                cache.end_fill(batch_size)

        for phase in (begin, plan, share, end):
            _together(phase, info, waiting)
    finally:
        lock.close()
        dist.destroy_process_group(waiting)


def _another_run(cache: TeacherOutputCache) -> str:
    return f"teacher-output cache {cache.root}: another run is writing it; waiting"


def _sharing(root: Path, info: DistInfo, group) -> list[int]:
    """The ranks that see ``root`` as this process does (each leaves a mark in it)."""
    token = broadcast_from_main(uuid.uuid4().hex, info)
    marks = root / f".fill-peers-{token}"
    marks.mkdir(parents=True, exist_ok=True)
    (marks / str(info.rank)).touch()
    dist.barrier(group=group)
    peers = sorted(int(p.name) for p in marks.iterdir())
    dist.barrier(group=group)
    if info.rank == peers[0]:
        shutil.rmtree(marks, ignore_errors=True)
    return peers


def _together(phase: Callable[[], None], info: DistInfo, group) -> None:
    """``phase`` on every process, then a failure anywhere raised everywhere (named by its rank), so
    no process waits for ever on one that failed."""
    own: BaseException | None = None
    try:
        phase()
    except Exception as exc:
        own = exc
    text = None if own is None else (str(own) if isinstance(own, KdzooError) else f"{type(own).__name__}: {own}")
    errors: list[str | None] = [None] * info.world
    dist.all_gather_object(errors, text, group=group)
    if own is not None:
        raise own
    for rank, error in enumerate(errors):
        if error is not None:
            raise KdzooError(f"the teacher-output cache's fill failed on process {rank}: {error}")
