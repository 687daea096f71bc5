"""Streamed datasets as shards of encoded samples, read in order without decoding: webdataset tar
shards (``data.name=wds/PATH``) and Hugging Face streaming datasets (``hfids/NAME``).

The names and conventions are timm's (``timm.data.create_dataset``): a webdataset sample is the run
of tar members sharing a key (the member's path up to the first dot of its file name), its image the
``jpg``/``jpeg``/``png``/``webp`` member and its class the ``cls`` member; a Hugging Face row's image
is its ``image`` column and its class its ``label`` column. timm's own readers split shards over
processes and workers in an order that depends on how many there are, and restart an epoch from its
beginning; :mod:`kdzoo.data.stream_batches` needs every sample's place in one global order instead
(N processes train as one does; a resumed epoch continues where it stopped), so kdzoo reads the
shards itself and leaves the decoding of a sample to the process whose share it is.
"""

from __future__ import annotations

import abc
import functools
import io
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kdzoo.config.checks import clip
from kdzoo.errors import KdzooError, first_line

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
LABEL_SUFFIX = "cls"


@dataclass(frozen=True)
class RawSample:
    """One sample as stored: its class, its place in the source (``None`` where the source does not
    state its size), and how to read its encoded image (called only where the sample is decoded)."""

    label: int
    sample_id: int | None
    read: Callable[[], bytes]


class StreamSource(abc.ABC):
    """Shards of samples, each read from its start in a fixed order."""

    name: str
    num_classes: int

    @property
    @abc.abstractmethod
    def shards(self) -> int:
        """How many shards the source has."""

    @abc.abstractmethod
    def samples(self, shard: int) -> Iterator[RawSample]:
        """The samples of ``shard`` in stored order, undecoded."""

    def size(self) -> int | None:
        """The number of samples, where the source states it."""
        return None

    def labels(self) -> list[int] | None:
        """Every sample's class by ``sample_id``, where the source gives them without a pass."""
        return None

    @functools.cached_property
    def counted(self) -> int:
        """The number of samples: stated, or counted by reading every shard once (nothing decoded); once
        per source, however many batch sources evaluate on it (the student's, the teacher's inputs)."""
        size = self.size()
        return size if size is not None else sum(1 for s in range(self.shards) for _ in self.samples(s))


def decode(raw: RawSample, where: str):
    """The sample's image as RGB, or one line naming the sample that cannot be decoded."""
    from PIL import Image

    try:
        return Image.open(io.BytesIO(raw.read())).convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for unknown, truncated and broken data
        raise KdzooError(f"{where}: sample {raw.sample_id} cannot be decoded ({clip(str(exc))})") from None


def shard_files(path: Path, split: str, where: str) -> list[Path]:
    """A split's webdataset shards: the ``.tar`` files of ``PATH/SPLIT/``, else those under ``PATH``
    whose names hold the split's name (``imagenet-train-000001.tar``), in name order."""
    if (path / split).is_dir():
        files = sorted((path / split).glob("*.tar"))
    else:
        files = sorted(p for p in path.glob("*.tar") if split in p.stem) if path.is_dir() else []
    if not files:
        raise KdzooError(
            f"{where}: no webdataset shards for split '{split}' (.tar files in {path / split}/, or under {path} "
            f"with '{split}' in their names); check the path and data.train_split / data.val_split"
        )
    return files


def _read_range(path: str, offset: int, size: int) -> bytes:
    # a member's bytes by their place in the tar: the shard need not stay open while a sample waits
    # in a shuffle buffer
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


@dataclass(frozen=True)
class _TarSample:
    label: int
    offset: int
    size: int


class TarShards(StreamSource):
    """webdataset shards (``files``, in order). Their members' headers and class files are scanned
    once (no image is read), which gives every sample a place."""

    def __init__(self, name: str, files: list[Path]) -> None:
        self.name = name
        self.files = [str(f) for f in files]
        self._index = [self._scan(f) for f in self.files]
        self._offsets = [0]
        for index in self._index:
            self._offsets.append(self._offsets[-1] + len(index))
        labels = self.labels()
        if not labels:
            raise KdzooError(f"data.name '{clip(name)}': its shards hold no samples")
        self.num_classes = max(labels) + 1

    def _scan(self, path: str) -> list[_TarSample]:
        samples: list[_TarSample] = []
        key, image, label = None, None, None

        def close() -> None:
            if key is None:
                return
            if image is None or label is None:
                missing = "an image (" + "/".join(IMAGE_SUFFIXES) + ")" if image is None else "a .cls class"
                raise KdzooError(f"data.name '{clip(self.name)}': sample '{key}' in {path} has no {missing}")
            samples.append(_TarSample(label, image.offset_data, image.size))

        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    folder, _, base = member.name.rpartition("/")
                    stem, _, suffix = base.partition(".")
                    this = f"{folder}/{stem}" if folder else stem
                    if this != key:
                        close()
                        key, image, label = this, None, None
                    suffix = suffix.lower()
                    if suffix in IMAGE_SUFFIXES and image is None:
                        image = member
                    elif suffix == LABEL_SUFFIX:
                        fh = tar.extractfile(member)
                        label = int(fh.read().decode().strip()) if fh is not None else None
                close()
        except (tarfile.TarError, OSError, ValueError) as exc:
            raise KdzooError(
                f"data.name '{clip(self.name)}': shard {path} cannot be read ({clip(first_line(exc))})"
            ) from None
        return samples

    @property
    def shards(self) -> int:
        return len(self.files)

    def samples(self, shard: int) -> Iterator[RawSample]:
        path, first = self.files[shard], self._offsets[shard]
        for i, s in enumerate(self._index[shard]):
            yield RawSample(s.label, first + i, functools.partial(_read_range, path, s.offset, s.size))

    def size(self) -> int:
        return self._offsets[-1]

    def labels(self) -> list[int]:
        return [s.label for index in self._index for s in index]


def _row_image(value) -> bytes:
    # an image column read with decode=False: its bytes, or the path of a local file
    if value.get("bytes") is not None:
        return value["bytes"]
    with open(value["path"], "rb") as fh:
        return fh.read()


class HubStream(StreamSource):
    """A Hugging Face dataset read as a stream (``datasets``' streaming mode): on the Hub, or a local
    folder of its files; its shards are the dataset's files. Images are read undecoded."""

    def __init__(self, name: str, path: str, split: str, cache_dir: str | None) -> None:
        import datasets

        self.name = name
        builder = datasets.load_dataset_builder(path, cache_dir=cache_dir)
        stream = builder.as_streaming_dataset(split=split)
        features = stream.features or builder.info.features
        if features is None or "image" not in features or "label" not in features:
            columns = ", ".join(features or {}) or "unknown"
            raise KdzooError(f"data.name '{clip(name)}': needs 'image' and 'label' columns (it has: {columns})")
        classes = getattr(features["label"], "num_classes", None)
        if not classes:
            raise KdzooError(
                f"data.name '{clip(name)}': its 'label' column is not a ClassLabel, so its classes are unknown"
            )
        self.num_classes = int(classes)
        self.stream = stream.cast_column("image", datasets.Image(decode=False))
        split_info = (builder.info.splits or {}).get(split)
        self._size = getattr(split_info, "num_examples", None) or None

    @property
    def shards(self) -> int:
        return int(self.stream.num_shards)

    def samples(self, shard: int) -> Iterator[RawSample]:
        rows = self.stream.shard(num_shards=self.shards, index=shard) if self.shards > 1 else self.stream
        # .iter, not iter(): in a loader worker, iter() would keep only the shards datasets assigns that
        # worker, and here every worker reads its process's partitions whole (kdzoo.data.stream_batches)
        for rows_of in rows.iter(batch_size=256):
            for label, image in zip(rows_of["label"], rows_of["image"], strict=True):
                yield RawSample(int(label), None, functools.partial(_row_image, image))

    def size(self) -> int | None:
        return self._size
