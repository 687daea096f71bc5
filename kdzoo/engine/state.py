"""What ``last.pt`` holds: one typed record, written and read in this one place.

The file is a plain dict of tensors and containers (loadable with ``weights_only=True``) with a
``format`` field; :meth:`RunState.load` refuses any other format in one line.
"""

from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdzoo import checkpoint
from kdzoo.errors import KdzooError

FORMAT = "kdzoo-checkpoint-2"  # 2: RNG states as tensors and lists


@dataclass
class Position:
    """Where a run stands: the stage and epoch to run next, the step inside that epoch (mid-epoch
    checkpoints), and the epochs finished over the whole run. ``stage == len(stages)``: done."""

    stage: int = 0
    epoch: int = 0
    step: int = 0
    global_epoch: int = 0


class RunClock:
    """A run's wall time and CPU time, carried on across resumes (from the checkpoint's totals)."""

    def __init__(self, wall_before: float = 0.0, cpu_before: float = 0.0):
        self._wall0, self._cpu0 = time.perf_counter() - wall_before, time.process_time() - cpu_before

    def wall(self) -> float:
        return time.perf_counter() - self._wall0

    def cpu(self) -> float:
        return time.process_time() - self._cpu0


@dataclass
class RunState:
    """A run's checkpoint. ``rng`` is this process's RNG states (``rng_per_rank``: every process's,
    under torchrun); ``partial`` an epoch's running sums at a mid-epoch checkpoint; ``method_teacher``
    the ``name`` and weights of a teacher a method set during the run (a trained generation)."""

    config: dict[str, Any]
    student: dict[str, Any]
    modules: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    position: Position
    rng: dict[str, Any]
    history: list[dict[str, Any]]
    teacher_metrics: dict[str, float] | None = None
    wall_time_s: float = 0.0
    partial: dict[str, Any] | None = None
    rng_per_rank: list[dict[str, Any]] | None = None
    method_teacher: dict[str, Any] | None = None
    partial_per_rank: list[dict[str, Any] | None] | None = None  # each process's epoch totals (torchrun)
    cpu_time_s: float = 0.0  # CPU seconds of this process (every thread): a cost other jobs barely change
    ema: dict[str, Any] | None = None  # the student's EMA (train.ema): its "weights" and its "updates" so far
    format: str = field(default=FORMAT)

    def save(self, path: Path) -> None:
        checkpoint.save_atomic(dataclasses.asdict(self), path)

    @classmethod
    def load(cls, path: Path) -> RunState:
        return cls.checked(checkpoint.load(path), path)

    def to_bytes(self) -> bytes:
        """What :meth:`save` writes, in memory (sent from the main process to the others)."""
        buffer = io.BytesIO()
        torch.save(dataclasses.asdict(self), buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes, path: Path) -> RunState:
        """What :meth:`to_bytes` made of the checkpoint at ``path`` (read as tensors and containers only)."""
        return cls.checked(torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True), path)

    @classmethod
    def checked(cls, data: dict[str, Any], path: Path) -> RunState:
        """``data`` read from ``path`` as a checkpoint, or one line saying what is wrong with it."""
        if "config" not in data or "position" not in data:
            raise KdzooError(f"{path} is not a kdzoo run checkpoint (no config/position inside)")
        if data.get("format") != FORMAT:
            raise KdzooError(
                f"{path} has checkpoint format {data.get('format')!r}; this kdzoo reads {FORMAT!r} "
                f"(use the kdzoo that wrote it, or train the run again)"
            )
        known = {f.name: f for f in dataclasses.fields(cls)}
        for name, expected in _SHAPES.items():
            value = data.get(name, None if name not in _REQUIRED else _MISSING)
            if value is None and name not in _REQUIRED:
                continue
            if not isinstance(value, expected):
                wanted = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
                raise KdzooError(_damaged(path, f"its '{name}' is {type(value).__name__}, not {wanted}"))
        for part in ("student", "modules"):
            if not all(isinstance(v, torch.Tensor) for v in data[part].values()):
                raise KdzooError(_damaged(path, f"its '{part}' weights are not all tensors"))
        try:
            position = Position(**data["position"])
        except TypeError as exc:
            raise KdzooError(_damaged(path, f"its position is malformed ({exc})")) from None
        if not all(isinstance(getattr(position, f.name), int) for f in dataclasses.fields(Position)):
            raise KdzooError(_damaged(path, f"its position is malformed ({data['position']})"))
        return cls(**{**{k: v for k, v in data.items() if k in known}, "position": position})

    def rng_of(self, rank: int) -> dict[str, Any]:
        return self.rng_per_rank[rank] if self.rng_per_rank else self.rng

    def partial_of(self, rank: int) -> dict[str, Any] | None:
        """Process ``rank``'s totals of the epoch a mid-epoch checkpoint interrupted (its own sums: the
        epoch's means average the processes' at its end)."""
        return self.partial_per_rank[rank] if self.partial_per_rank else self.partial


_MISSING = object()
#: what each field of a checkpoint must be: a file with the right format marker and other contents is
#: damaged (or made by hand), and is refused in one line rather than failing deep inside a resume
_SHAPES: dict[str, type | tuple[type, ...]] = {
    "config": dict,
    "student": dict,
    "modules": dict,
    "optimizer": dict,
    "scheduler": dict,
    "scaler": dict,
    "position": dict,
    "rng": dict,
    "history": list,
    "teacher_metrics": dict,
    "wall_time_s": (int, float),
    "partial": dict,
    "rng_per_rank": list,
    "partial_per_rank": list,
    "method_teacher": dict,
    "cpu_time_s": (int, float),
    "ema": dict,
}
_REQUIRED = {"config", "student", "modules", "optimizer", "scheduler", "scaler", "position", "rng", "history"}


def _damaged(path: Path, why: str) -> str:
    return f"checkpoint {path} is damaged: {why}; delete it to train the run from the start"
