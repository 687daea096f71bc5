"""Offline KD: the teacher's outputs computed once per sample (and view), memory-mapped on disk.

Valid only when a sample's teacher input is the same every epoch: no augmentation, or a fixed
number of augmented views per sample (``data.views``; epoch e uses view e % views). The cache is
keyed by the teacher's weights (a hash of its weights file), the data and transform settings and
the taps the active methods need, and reused by every later run with the same key. Once a cache
is complete the teacher model is not even built: its ``ModelInfo`` and accuracy are stored beside
the outputs.

Layout: ``<cache>/teacher_outputs/<teacher+data key>/info.json`` (teacher ModelInfo, accuracy) and
``.../taps-<key>/`` with one float16 ``np.memmap`` per output, shaped (views, samples, ...).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdzoo.api import ModelInfo, Outputs, StageInfo, Taps
from kdzoo.checkpoint import check_free_space, disk_full, write_text_atomic
from kdzoo.config import as_dict
from kdzoo.data import DataContents, LoaderBatches, TensorBatches, fits_on, to_device
from kdzoo.data.inputs import RunInputs
from kdzoo.engine.cache_entries import remember_key, why_new_entry
from kdzoo.engine.extract import FeatureExtractor
from kdzoo.errors import KdzooError
from kdzoo.paths import cache_dir
from kdzoo.reporting import DamagedFile, read_json

FORMAT = 4  # 2: keyed by the data's contents; 3: balanced data.train_limit; 4: each model's input


def _key(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def check_cacheable(batches: Any, mixing: bool = False) -> TensorBatches | LoaderBatches:
    if not isinstance(batches, TensorBatches | LoaderBatches):
        raise KdzooError(
            "teacher.cache needs a dataset kdzoo loads by sample (in memory, an image folder, hfds/, a plugin's): "
            "a streamed one (wds/, hfids/) or a user's own DataLoader gives no sample's view twice"
        )
    if mixing:
        raise KdzooError(
            "teacher.cache: data.mixup/cutmix mix each batch anew, so cached teacher outputs would not match the "
            "mixed images; turn teacher.cache or the mixing off"
        )
    if not batches.deterministic:
        raise KdzooError(
            "teacher.cache: the training inputs change every epoch (data.augment is on), so cached teacher "
            "outputs would not match them; set data.views=N for N fixed augmented views per sample, or "
            "data.augment=false"
        )
    return batches


class TeacherOutputCache:
    """One teacher on one dataset: its ModelInfo, accuracy and per-sample outputs per set of taps."""

    def __init__(
        self,
        teacher_identity: str,
        data_settings: dict[str, Any],
        batches: TensorBatches | LoaderBatches,
        topk: int | None = None,
    ):
        self.batches = batches
        #: store only each sample's ``topk`` largest logits, their classes and one logit for all the
        #: others (``teacher.cache_topk``); ``None``: every logit
        self.topk = topk
        self.views = max(1, batches.views if batches.augment else 1)
        self.key = {"format": FORMAT, "teacher": teacher_identity, "data": data_settings}
        self.root = cache_dir() / "teacher_outputs" / _key(self.key)
        self._folder: Path | None = None  # the entry of the selected taps (select)
        self.damage: str | None = None  #: what was wrong with the selected entry, when it had to be filled again
        self.arrays: dict[str, np.memmap] = {}
        self._resident: dict[str, Tensor] | None = None  # the arrays in GPU memory, once looked up there

    # --- what is known without the teacher model
    @property
    def info_file(self) -> Path:
        return self.root / "info.json"

    def _info(self) -> dict[str, Any] | None:
        """info.json, or ``None`` when it is missing or damaged (then the teacher writes it again)."""
        raw = _read_json(self.info_file)
        if raw is None or not isinstance(raw.get("teacher_info"), dict):
            return None
        return raw

    def teacher_info(self) -> ModelInfo | None:
        raw = self._info()
        if raw is None:
            return None
        try:
            t = raw["teacher_info"]
            return ModelInfo(
                t["name"],
                tuple(StageInfo(**s) for s in t["stages"]),
                t["num_classes"],
                t["embedding_dim"],
                t["img_size"],
                t.get("distillation_head", False),
                t.get("feature_map_channels", 0),
            )
        except (KeyError, TypeError):  # damaged: treated as missing, so the teacher is built and writes it again
            return None

    def teacher_metrics(self) -> dict[str, float] | None:
        raw = self._info()
        return None if raw is None else raw.get("teacher_metrics")

    def remember(self, info: ModelInfo, metrics: dict[str, float]) -> None:
        payload = {"teacher_info": as_dict(info), "teacher_metrics": metrics}
        write_text_atomic(json.dumps(payload, indent=2), self.info_file)
        remember_key(self.root, self.key)

    def why_new(self) -> str:
        """Why no entry stored this teacher's outputs for this data yet."""
        return why_new_entry(self.root, self.key, "*")

    # --- outputs for one set of taps
    def complete_for(self, taps: Taps) -> bool:
        """Whether the entry holds the outputs of ``taps`` and the teacher's accuracy (selecting them)."""
        return self.select(taps) and self.teacher_metrics() is not None

    def select(self, taps: Taps) -> bool:
        """Point at the outputs for ``taps``; True when they are complete and intact (no teacher needed).
        A damaged entry (meta.json unreadable, an array of the wrong size) counts as not filled, and
        :attr:`damage` says what was wrong."""
        self.taps = taps
        what = {"features": list(taps.teacher), "embedding": taps.teacher_embedding}
        if taps.teacher_summaries:
            what["summaries"] = [s.key for s in taps.teacher_summaries]
        if taps.teacher_preact:
            what["preact"] = list(taps.teacher_preact)
        if self.topk is not None:
            what["topk"] = self.topk
        self._folder = self.root / f"taps-{_key(what)}"
        self.damage = None
        meta_file = self.folder / "meta.json"
        if not meta_file.is_file():
            return False
        meta = _read_json(meta_file)
        if meta is None or not meta.get("complete") or not isinstance(meta.get("shapes"), dict):
            self.damage = f"{meta_file} is damaged"
            return False
        files = meta.get("files") or {name: f"{name}.f16" for name in meta["shapes"]}
        for name, shape in meta["shapes"].items():
            path = self.folder / files.get(name, f"{name}.f16")
            expected = self._bytes(shape, name)
            if not path.is_file() or path.stat().st_size != expected:
                found = f"{path.stat().st_size:,} bytes" if path.is_file() else "missing"
                self.damage = f"{path} is {found}, expected {expected:,}"
                return False
        self._open(meta["shapes"], files, mode="r")
        return True

    @property
    def folder(self) -> Path:
        """The entry of the taps :meth:`select` pointed at."""
        if self._folder is None:
            raise RuntimeError("TeacherOutputCache.select(taps) first")
        return self._folder

    def _bytes(self, shape: list[int], name: str = "") -> int:
        itemsize = np.dtype(_dtype(name)).itemsize
        return self.views * self.batches.num_samples * int(np.prod(shape, dtype=np.int64)) * itemsize

    def _open(self, shapes: dict[str, list[int]], files: dict[str, str], mode: str) -> None:
        n = self.batches.num_samples
        self.arrays = {
            name: np.memmap(self.folder / files[name], dtype=_dtype(name), mode=mode, shape=(self.views, n, *shape))  # type: ignore[call-overload]  # numpy's stubs take no Path here
            for name, shape in shapes.items()
        }
        self._resident = None

    def _allocate(self, shapes: dict[str, list[int]]) -> dict[str, str]:
        """New files for every output, their space reserved on disk first: a disk that fills up
        during the fill would otherwise kill the process with SIGBUS when it writes into the memory
        map. Fresh names, so a process still reading an earlier (damaged) generation is not disturbed."""
        generation = uuid.uuid4().hex[:8]
        files = {name: f"{name}-{generation}.f16" for name in shapes}
        total = sum(self._bytes(shape, name) for name, shape in shapes.items())
        check_free_space(self.folder / "meta.json", total)
        for name, shape in shapes.items():
            path = self.folder / files[name]
            try:
                with open(path, "wb") as fh:
                    _reserve(fh.fileno(), self._bytes(shape, name))
            except OSError as exc:
                if path.exists():
                    path.unlink()
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise KdzooError(disk_full(path, self._bytes(shape, name), previous=False)) from None
                raise
        return files

    def fill(
        self,
        extractor: FeatureExtractor,
        batch_size: int,
        device: torch.device,
        say: Callable[[str], None] = lambda _text: None,
    ) -> None:
        """Run the teacher once over every sample (and view) and store its outputs; ``say`` gets the
        size the entry takes, before anything is written. A fill that was killed goes on with the
        batches its last progress record (written every few seconds) does not count as done."""
        self.begin_fill(extractor, batch_size, device, say)
        self.fill_share(extractor, batch_size, device, self.batches_to_do(batch_size))
        self.end_fill(batch_size)

    def _batch_starts(self, batch_size: int) -> list[tuple[int, int]]:
        n = self.batches.num_samples
        return [(view, start) for view in range(self.views) for start in range(0, n, batch_size)]

    def begin_fill(
        self,
        extractor: FeatureExtractor,
        batch_size: int,
        device: torch.device,
        say: Callable[[str], None] = lambda _text: None,
    ) -> None:
        """The files of a fill, made (their size said first: the first batch's outputs give the shapes;
        that batch is stored) or, after a kill, found with the record of the batches done. Then any
        number of processes sharing this folder fill their share (:meth:`fill_share`) and one ends it
        (:meth:`end_fill`)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        progress = self._progress(batch_size)
        if progress:
            done, total = (
                int(np.count_nonzero(self._done_marks(progress["files"], mode="r"))),
                len(self._batch_starts(batch_size)),
            )
            say(f"teacher-output cache: going on with the fill, {done} of {total} batches done")
            return
        n, started = self.batches.num_samples, time.process_time()
        named = self._outputs(extractor, 0, torch.arange(0, min(batch_size, n)), device)
        shapes = {k: list(v.shape[1:]) for k, v in named.items()}
        total = sum(self._bytes(shape, name) for name, shape in shapes.items())
        say(f"teacher-output cache: {n:,} samples x {self.views} view(s) take {total:,} bytes ({total / 2**20:.1f} MB)")
        for spent in self.folder.glob(f"{FILL_CPU}-*"):  # an abandoned fill's
            spent.unlink(missing_ok=True)
        files = self._allocate(shapes)
        files[DONE_MARKS] = f"{DONE_MARKS}-{uuid.uuid4().hex[:8]}.u8"
        np.memmap(
            self.folder / files[DONE_MARKS], dtype=np.uint8, mode="w+", shape=(len(self._batch_starts(batch_size)),)
        ).flush()
        self._open(shapes, _outputs_of(files), mode="r+")
        self._store(named, 0, 0)
        self._record_progress(files, shapes, batch_size, [0], time.process_time() - started)

    def batches_to_do(self, batch_size: int) -> list[int]:
        """The numbers of a begun fill's batches not yet done. Processes that share the fill each read
        this before any of them marks a batch (each takes every N-th): read later, the list would differ
        between them and some batches would be nobody's."""
        return np.flatnonzero(self._done_marks(self._begun(batch_size)["files"], mode="r") == 0).tolist()

    def fill_share(self, extractor: FeatureExtractor, batch_size: int, device: torch.device, mine: list[int]) -> None:
        """This process's part of a begun fill: the batches numbered ``mine`` (of :meth:`batches_to_do`).
        Each counts as done once its outputs are on disk (flushed every few seconds)."""
        progress = self._begun(batch_size)
        files, shapes = progress["files"], progress["shapes"]
        self._open(shapes, _outputs_of(files), mode="r+")
        starts = self._batch_starts(batch_size)
        started, recorded, finished = time.process_time(), time.monotonic(), []
        for number, b in enumerate(mine, start=1):
            view, start = starts[b]
            idx = torch.arange(start, min(start + batch_size, self.batches.num_samples))
            self._store(self._outputs(extractor, view, idx, device), view, start)
            finished.append(b)
            if time.monotonic() - recorded > FILL_RECORD_S or number == len(mine):
                self._record_progress(files, shapes, batch_size, finished, time.process_time() - started)
                finished, started, recorded = [], time.process_time(), time.monotonic()

    def end_fill(self, batch_size: int) -> None:
        """Mark the entry complete once every batch is done (by whichever processes filled it)."""
        record = self._begun(batch_size)
        shapes, marks = record["shapes"], self._done_marks(record["files"], mode="r")
        if not marks.all():
            raise KdzooError(
                f"teacher-output cache {self.folder}: {int((marks == 0).sum())} batches were not filled; start again"
            )
        cpu_s = sum(_seconds(p) for p in self.folder.glob(f"{FILL_CPU}-*"))
        files = _outputs_of(record["files"])
        self._open(shapes, files, mode="r")
        meta = {
            "complete": True,
            "shapes": shapes,
            "files": files,
            "samples": self.batches.num_samples,
            "views": self.views,
            "fill_cpu_s": round(cpu_s, 2),
        }
        # the outputs are on disk before the record that says so (atomically): a kill leaves no "complete"
        # entry with missing outputs
        write_text_atomic(json.dumps(meta, indent=2), self.folder / "meta.json")
        (self.folder / FILL_PROGRESS).unlink(missing_ok=True)
        (self.folder / record["files"][DONE_MARKS]).unlink(missing_ok=True)
        for spent in self.folder.glob(f"{FILL_CPU}-*"):
            spent.unlink(missing_ok=True)
        for stale in [*self.folder.glob("*.f16"), *self.folder.glob("*.u8")]:  # an earlier, damaged generation
            if stale.name not in files.values():
                stale.unlink(missing_ok=True)

    def _outputs(self, extractor: FeatureExtractor, view: int, idx: Tensor, device: torch.device) -> dict[str, Tensor]:
        x = self.batches.view(idx, view).to(device)
        with torch.inference_mode():
            out = extractor(x)
        return self._named(out, self.topk)

    def _store(self, named: dict[str, Tensor], view: int, start: int) -> None:
        for name, value in named.items():
            stored = value.cpu().numpy() if name == TOPK_INDEX else value.float().cpu().numpy()
            self.arrays[name][view, start : start + len(stored)] = stored

    def _done_marks(self, files: dict[str, str], mode: str) -> np.memmap:
        return np.memmap(self.folder / files[DONE_MARKS], dtype=np.uint8, mode=mode)  # type: ignore[call-overload]  # numpy's stubs take no Path here

    def _record_progress(
        self, files: dict[str, str], shapes: dict[str, list[int]], batch_size: int, done: list[int], cpu_s: float
    ) -> None:
        """Batches ``done`` by this process, marked once their outputs are on disk (flushed first: a mark
        written before its outputs could survive a kill that they do not); and its CPU seconds so far."""
        for array in self.arrays.values():
            array.flush()
        marks = self._done_marks(files, mode="r+")
        marks[done] = 1
        marks.flush()
        spent = self.folder / f"{FILL_CPU}-{os.getpid()}"
        write_text_atomic(str(_seconds(spent) + cpu_s), spent)
        record = {"files": files, "shapes": shapes, "batch_size": batch_size}
        record |= {"samples": self.batches.num_samples, "views": self.views}
        if _read_json(self.folder / FILL_PROGRESS) != record:
            write_text_atomic(json.dumps(record, indent=2), self.folder / FILL_PROGRESS)

    def _begun(self, batch_size: int) -> dict[str, Any]:
        record = self._progress(batch_size)
        if record is None:
            raise KdzooError(f"teacher-output cache {self.folder}: its fill record vanished while filling; start again")
        return record

    def _progress(self, batch_size: int) -> dict[str, Any] | None:
        """The begun (or killed) fill's record, when its files are all there to go on with."""
        record = _read_json(self.folder / FILL_PROGRESS)
        if record is None:
            return None
        same = (record.get("samples"), record.get("views"), record.get("batch_size"))
        if same != (self.batches.num_samples, self.views, batch_size):
            return None
        files, shapes = record.get("files"), record.get("shapes")
        if not isinstance(files, dict) or not isinstance(shapes, dict) or files.keys() != {*shapes, DONE_MARKS}:
            return None
        for name, shape in shapes.items():
            path = self.folder / files[name]
            if not path.is_file() or path.stat().st_size != self._bytes(shape, name):
                return None
        marks = self.folder / files[DONE_MARKS]
        if not marks.is_file() or marks.stat().st_size != len(self._batch_starts(batch_size)):
            return None
        return record

    def fill_cpu_s(self) -> float:
        """CPU seconds the teacher's pass over every sample took when these outputs were stored: what a
        run on the cache would otherwise pay, step by step, to run the teacher itself."""
        meta = _read_json(self.folder / "meta.json") or {}
        return float(meta.get("fill_cpu_s", 0.0))

    @staticmethod
    def _named(out: Outputs, topk: int | None = None) -> dict[str, Tensor]:
        # K of every class: the logits themselves are smaller than values and classes, and the same
        if topk is None or topk >= out.logits.shape[1]:
            logits = {"logits": out.logits}
        else:
            logits = top_logits(out.logits, topk)
        named = {**logits, **{f"feature{i}": f for i, f in out.features.items()}}
        named |= {f"summary-{key}": v for key, v in out.summaries.items()}
        named |= {f"preact{i}": v for i, v in out.preact.items()}
        if out.embedding is not None:
            named["embedding"] = out.embedding
        return named

    def lookup(self, idx: Tensor, view: int, device: torch.device) -> Outputs:
        """The stored teacher outputs for samples ``idx`` in their fixed ``view`` (float32, on ``device``)."""
        view = view if self.views > 1 else 0
        resident = self._resident_on(device)
        if resident:
            rows = to_device(idx, device)

            def read(name: str) -> Tensor:
                return resident[name][view].index_select(0, rows).float()

        else:
            sorted_rows = np.sort(idx.numpy())
            order = np.argsort(np.argsort(idx.numpy()))  # memmap reads in file order, then back to batch order

            def read(name: str) -> Tensor:
                host = torch.from_numpy(np.asarray(self.arrays[name][view, sorted_rows])[order])
                return to_device(host, device).float()

        features = {int(k[len("feature") :]): read(k) for k in self.arrays if k.startswith("feature")}
        summaries = {k[len("summary-") :]: read(k) for k in self.arrays if k.startswith("summary-")}
        preact = {int(k[len("preact") :]): read(k) for k in self.arrays if k.startswith("preact")}
        embedding = read("embedding") if "embedding" in self.arrays else None
        if TOPK_VALUES in self.arrays:
            logits = full_logits(read(TOPK_VALUES), read(TOPK_INDEX).long(), read(TOPK_REST), self._classes())
        else:
            logits = read("logits")
        return Outputs(logits, features, embedding, summaries, preact)

    @functools.cache  # noqa: B019  (one cache object per run: read info.json once, not every step)
    def _classes(self) -> int:
        info = self.teacher_info()
        assert info is not None  # written before the outputs are
        return info.num_classes

    def _resident_on(self, device: torch.device) -> dict[str, Tensor]:
        """On a GPU, the whole cache in device memory when it fits: a lookup is then an on-device
        gather, with no read from the memory map and no copy from the host per step."""
        if self._resident is None:
            fits = fits_on(device, sum(a.nbytes for a in self.arrays.values()))
            # np.array copies the memory map into writable memory, which torch wants to wrap
            self._resident = (
                {n: torch.from_numpy(np.array(a)).to(device) for n, a in self.arrays.items()} if fits else {}
            )
        return self._resident

    @property
    def size_mb(self) -> float:
        return sum(a.nbytes for a in self.arrays.values()) / 2**20

    def describe(self) -> str:
        return f"teacher-output cache {self.folder} ({self.size_mb:.1f} MB, {self.views} view(s))"


TOPK_VALUES, TOPK_INDEX, TOPK_REST = "logits-topk", "logits-index", "logits-rest"
DONE_MARKS = "done"  #: a fill's record of its batches done, one byte each (any process may mark its own)
FILL_CPU = "fill-cpu-s"  #: each filling process's CPU seconds so far
FILL_PROGRESS = "fill.json"  # how far a fill got: a killed one goes on from there
FILL_RECORD_S = 5.0  # seconds between progress records (each flushes the outputs written)


MAX_TOPK_CLASSES = 2**16  # the classes of the top logits are stored as uint16


def _dtype(name: str) -> type:
    """How an output is stored: classes as uint16, every value as float16."""
    return np.uint16 if name == TOPK_INDEX else np.float16


def top_logits(logits: Tensor, k: int) -> dict[str, Tensor]:
    """Each row's ``k`` largest logits, their classes, and the one logit that gives every other class an
    equal share of the probability the top ``k`` leave (at temperature 1): what ``teacher.cache_topk``
    stores instead of every logit (the top-k soft labels of FKD, Shen & Xing, ECCV 2022; TRL's top-k
    teacher logits)."""
    logits = logits.float()
    if logits.shape[1] > MAX_TOPK_CLASSES:
        raise KdzooError(
            f"teacher.cache_topk stores classes as 16-bit numbers; this teacher has {logits.shape[1]} classes "
            f"(at most {MAX_TOPK_CLASSES}): set teacher.cache_topk=null"
        )
    k = min(k, logits.shape[1])
    values, index = logits.topk(k, dim=1)
    rest = torch.zeros(len(logits), 1, device=logits.device)
    others = logits.shape[1] - k
    if others:
        total = torch.logsumexp(logits, dim=1, keepdim=True)
        left = 1.0 - torch.exp(values - total).sum(dim=1, keepdim=True)
        rest = total + torch.log(left.clamp_min(torch.finfo(torch.float32).tiny)) - math.log(others)
    return {TOPK_VALUES: values, TOPK_INDEX: index.int(), TOPK_REST: rest}


def full_logits(values: Tensor, index: Tensor, rest: Tensor, classes: int) -> Tensor:
    """Logits for every class from :func:`top_logits`' three: the stored ones where stored, the shared
    one elsewhere (with ``k`` = every class, exactly the stored logits)."""
    full = rest.expand(len(values), classes).clone()
    return full.scatter_(1, index, values)


def _outputs_of(files: dict[str, str]) -> dict[str, str]:
    """A fill record's output arrays (its files less the done marks)."""
    return {name: file for name, file in files.items() if name != DONE_MARKS}


def _seconds(path: Path) -> float:
    """A filling process's CPU seconds so far (0 before its first record)."""
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return 0.0


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or ``None`` when it is missing, empty, damaged or not an object."""
    try:
        return read_json(path)
    except DamagedFile:
        return None


def _reserve(fd: int, nbytes: int) -> None:
    """Give file ``fd`` ``nbytes`` of real disk blocks (not a sparse hole), or raise ENOSPC now."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, max(nbytes, 1))
    else:  # no fallocate (macOS): writing zeros reserves the blocks the same way
        chunk = b"\0" * (1 << 20)
        for start in range(0, nbytes, len(chunk)):
            os.write(fd, chunk[: min(len(chunk), nbytes - start)])
    os.ftruncate(fd, nbytes)


def data_settings(config, contents: DataContents | None, inputs: RunInputs | None = None) -> dict[str, Any]:
    """What a teacher's stored outputs depend on in the data: the samples (the splits' contents and
    the sample limit), how they become inputs, and the fixed views; not where the files are."""
    d = config.data
    if contents is None:  # data whose contents kdzoo cannot see: its settings, as before
        settings = dataclasses.asdict(d)
        for irrelevant in ("batch_size", "eval_batch_size", "num_workers"):
            settings.pop(irrelevant)
    else:
        settings = {"name": d.name, "contents": {"train": contents.train, "val": contents.val}}
        settings |= {"img_size": d.img_size, "augment": d.augment, "views": d.views, "train_limit": d.train_limit}
        # how an image folder's views are drawn (timm's transforms): other settings, other crops
        drawn = ("auto_augment", "re_prob", "re_mode", "color_jitter", "scale", "hflip", "interpolation", "crop_pct")
        settings |= {key: getattr(d, key) for key in drawn}
    if d.augment and d.views:
        settings["seed"] = config.train.seed  # per-sample views are drawn from the run's seed
    settings["inputs"] = inputs.as_record() if inputs is not None else None  # each model's (kdzoo.data.inputs)
    return settings
