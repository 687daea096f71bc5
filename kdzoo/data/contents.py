"""What a data set holds, as digests: so that caches follow the data's contents, not its settings.

A teacher kdzoo trained, and the teacher's outputs it stored, are valid for the images and labels
they were computed from. ``data.root`` names a folder, not what is in it: relabel the files in
place, or add images to an ImageFolder, and the same settings describe other data. The caches are
therefore keyed by :class:`DataContents`: a digest of each split as it was read (in-memory sets: the
pixels and labels themselves; file-backed sets: every file's path, label, size and modification
time, which changes when a file is rewritten, without reading every image again).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterable

import numpy as np
from torch import Tensor


class DataContents:
    """Digests of a data set's training and validation splits as read (the whole split, before
    ``data.train_limit`` takes its class-balanced subset), each computed once, when a cache first asks."""

    def __init__(self, train: Callable[[], str], val: Callable[[], str]):
        self._train, self._val = train, val

    @functools.cached_property
    def train(self) -> str:
        return self._train()

    @functools.cached_property
    def val(self) -> str:
        return self._val()


def tensors_digest(*tensors: Tensor) -> str:
    """A digest of tensors' shapes, types and values."""
    digest = hashlib.sha256()
    for t in tensors:
        array = np.ascontiguousarray(t.detach().cpu().numpy())
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:16]


def files_digest(samples: Iterable[tuple[str, int]]) -> str:
    """A digest of (path, label) pairs and each file's size and modification time."""
    digest = hashlib.sha256()
    for path, label in samples:
        stat = os.stat(path)
        digest.update(f"{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def in_memory(train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor]) -> DataContents:
    return DataContents(lambda: tensors_digest(*train), lambda: tensors_digest(*val))


def of_files(train: list[tuple[str, int]], val: list[tuple[str, int]]) -> DataContents:
    return DataContents(lambda: files_digest(train), lambda: files_digest(val))
