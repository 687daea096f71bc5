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
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdzoo.api import ModelInfo, Outputs, StageInfo, Taps
from kdzoo.config import as_dict
from kdzoo.data import TensorBatches, fits_on, to_device
from kdzoo.engine.extract import FeatureExtractor
from kdzoo.errors import KdzooError
from kdzoo.paths import cache_dir

FORMAT = 1


def _key(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def check_cacheable(batches: Any) -> TensorBatches:
    if not isinstance(batches, TensorBatches):
        raise KdzooError("teacher.cache needs an in-memory dataset (digits, fashion_mnist, cifar10/100, synthetic)")
    if not batches.deterministic:
        raise KdzooError(
            "teacher.cache: the training inputs change every epoch (data.augment is on), so cached teacher "
            "outputs would not match them; set data.views=N for N fixed augmented views per sample, or "
            "data.augment=false"
        )
    return batches


class TeacherOutputCache:
    """One teacher on one dataset: its ModelInfo, accuracy and per-sample outputs per set of taps."""

    def __init__(self, teacher_identity: str, data_settings: dict[str, Any], batches: TensorBatches):
        self.batches = batches
        self.views = max(1, batches.views if batches.augment else 1)
        self.root = (
            cache_dir()
            / "teacher_outputs"
            / _key({"format": FORMAT, "teacher": teacher_identity, "data": data_settings})
        )
        self.folder: Path | None = None
        self.arrays: dict[str, np.memmap] = {}
        self._resident: dict[str, Tensor] | None = None  # the arrays in GPU memory, once looked up there

    # --- what is known without the teacher model
    @property
    def info_file(self) -> Path:
        return self.root / "info.json"

    def teacher_info(self) -> ModelInfo | None:
        if not self.info_file.is_file():
            return None
        raw = json.loads(self.info_file.read_text())["teacher_info"]
        return ModelInfo(
            raw["name"],
            tuple(StageInfo(**s) for s in raw["stages"]),
            raw["num_classes"],
            raw["embedding_dim"],
            raw["img_size"],
            raw.get("distillation_head", False),
            raw.get("feature_map_channels", 0),
        )

    def teacher_metrics(self) -> dict[str, float] | None:
        return json.loads(self.info_file.read_text()).get("teacher_metrics") if self.info_file.is_file() else None

    def remember(self, info: ModelInfo, metrics: dict[str, float]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.info_file.write_text(json.dumps({"teacher_info": as_dict(info), "teacher_metrics": metrics}, indent=2))

    # --- outputs for one set of taps
    def select(self, taps: Taps) -> bool:
        """Point at the outputs for ``taps``; True when they are complete (no teacher needed)."""
        self.taps = taps
        what = {"features": list(taps.teacher), "embedding": taps.teacher_embedding}
        if taps.teacher_summaries:
            what["summaries"] = [s.key for s in taps.teacher_summaries]
        if taps.teacher_preact:
            what["preact"] = list(taps.teacher_preact)
        self.folder = self.root / f"taps-{_key(what)}"
        meta = self.folder / "meta.json"
        if not meta.is_file() or not json.loads(meta.read_text()).get("complete"):
            return False
        self._open(json.loads(meta.read_text())["shapes"], mode="r")
        return True

    def _open(self, shapes: dict[str, list[int]], mode: str) -> None:
        n = self.batches.num_samples
        self.arrays = {
            name: np.memmap(self.folder / f"{name}.f16", dtype=np.float16, mode=mode, shape=(self.views, n, *shape))
            for name, shape in shapes.items()
        }
        self._resident = None

    def fill(self, extractor: FeatureExtractor, batch_size: int, device: torch.device) -> None:
        """Run the teacher once over every sample (and view) and store its outputs."""
        self.folder.mkdir(parents=True, exist_ok=True)
        n = self.batches.num_samples
        started = time.process_time()
        for view in range(self.views):
            for start in range(0, n, batch_size):
                idx = torch.arange(start, min(start + batch_size, n))
                x = self.batches.view(idx, view).to(device)
                with torch.inference_mode():
                    out = extractor(x)
                named = self._named(out)
                if not self.arrays:
                    self._open({k: list(v.shape[1:]) for k, v in named.items()}, mode="w+")
                for name, value in named.items():
                    self.arrays[name][view, start : start + len(idx)] = value.float().cpu().numpy()
        for array in self.arrays.values():
            array.flush()
        shapes = {k: list(v.shape[2:]) for k, v in self.arrays.items()}
        (self.folder / "meta.json").write_text(
            json.dumps(
                {
                    "complete": True,
                    "shapes": shapes,
                    "samples": n,
                    "views": self.views,
                    "fill_cpu_s": round(time.process_time() - started, 2),
                },
                indent=2,
            )
        )

    def fill_cpu_s(self) -> float:
        """CPU seconds the teacher's pass over every sample took when these outputs were stored: what a
        run on the cache would otherwise pay, step by step, to run the teacher itself."""
        return json.loads((self.folder / "meta.json").read_text()).get("fill_cpu_s", 0.0)

    @staticmethod
    def _named(out: Outputs) -> dict[str, Tensor]:
        named = {"logits": out.logits, **{f"feature{i}": f for i, f in out.features.items()}}
        named |= {f"summary-{key}": v for key, v in out.summaries.items()}
        named |= {f"preact{i}": v for i, v in out.preact.items()}
        if out.embedding is not None:
            named["embedding"] = out.embedding
        return named

    def lookup(self, idx: Tensor, epoch: int, device: torch.device) -> Outputs:
        """The stored teacher outputs for samples ``idx`` as seen in ``epoch`` (float32, on ``device``)."""
        view = self.batches.view_of(epoch) if self.views > 1 else 0
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
        return Outputs(read("logits"), features, embedding, summaries, preact)

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


def data_settings(config) -> dict[str, Any]:
    d = config.data
    settings = dataclasses.asdict(d)
    for irrelevant in ("batch_size", "eval_batch_size", "num_workers"):
        settings.pop(irrelevant)
    if d.augment and d.views:
        settings["seed"] = config.train.seed  # per-sample views are drawn from the run's seed
    return settings
