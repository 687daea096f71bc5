"""The records a run writes and other parts of kdzoo read, typed: one epoch, and the run's summary.

The loop builds an :class:`EpochRecord` per epoch (a line of ``metrics.jsonl``, an entry of
``run.history`` and the ``metrics`` the lifecycle hooks receive, as a plain dict) and a
:class:`RunSummary` at the end (``summary.json``); ``kdzoo compare``, ``plot`` and ``export`` read
them back through :meth:`RunSummary.read`. The JSON keys are the files' keys, unchanged: users read
these files too. Every record is built with keywords.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kdzoo.reporting.metrics_file import DamagedFile, read_json

#: where a run's teacher outputs came from: its model, a teacher-output cache, or a method (a trained
#: generation); ``None``: a run without a teacher
TeacherSource = Literal["model", "cached outputs", "method"]


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: its stage, numbers, the training terms (unweighted means, their ``weights``, the
    loss, images/s), validation accuracy, the learning rate and the epoch's wall time."""

    stage: str
    stage_index: int
    epoch: int  #: within the stage, from 1
    global_epoch: int  #: over the whole run, from 1
    global_step: int  #: optimizer steps over the whole run up to this epoch's end (the per-step logs' x-axis)
    train: dict[str, Any]
    val: dict[str, float]
    lr: float
    epoch_time_s: float
    val_ema: dict[str, float] | None = None  #: the student's EMA on the same data (``train.ema``)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return data if self.val_ema is not None else {k: v for k, v in data.items() if k != "val_ema"}


@dataclass(frozen=True)
class StageResult:
    name: str
    top1: float


@dataclass(frozen=True)
class AssistantResult:
    """A link of the run's teacher-assistant chain (``teacher.assistants``), in order: its model, and
    where kdzoo trained it (its run folder in the cache) with its top-1 there; ``None`` for one given."""

    model: str
    top1: float | None = None
    run_dir: str | None = None


@dataclass(frozen=True)
class RunSummary:
    """``summary.json``: what a finished run reached and cost. ``teacher`` is how the teacher is shown
    (e.g. ``resnet18 (cached outputs)``), ``teacher_source`` where its outputs came from."""

    student_top1: float
    wall_time_s: float
    methods: list[str] = field(default_factory=list)
    teacher: str | None = None
    teacher_source: TeacherSource | None = None
    student: str = ""
    data: str = ""
    teacher_top1: float | None = None
    student_best_top1: float | None = None
    #: the epoch (over the run, from 1) whose student is ``student_best.safetensors``: chosen on data.val
    student_best_epoch: int | None = None
    student_ema_top1: float | None = None  #: the EMA's (``train.ema``) at the end: ``student_ema.safetensors``
    epochs: int = 0
    stages: list[StageResult] = field(default_factory=list)
    #: the teacher-assistant chain between the run's teacher and ``teacher`` (its last link), in order
    assistants: list[AssistantResult] = field(default_factory=list)
    cpu_time_s: float | None = None  #: CPU seconds of the run's process (a cost other jobs barely change)
    torch_threads: int | None = None  #: what the times above were measured with
    teacher_cache_cpu_s: float | None = None  #: the teacher's pass that filled the cache this run read
    run_dir: str = ""
    deployed: dict[str, Any] = field(default_factory=dict)  #: the deployed network's parameters and FLOPs
    #: the distribution, version and plugin that supplied each method (``kdzoo.registry.Registry.method_sources``)
    method_sources: dict[str, dict[str, str]] = field(default_factory=dict)
    #: what later commands added (``kdzoo export``'s ``deploy`` table), kept as they wrote it
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {**{k: v for k, v in data.items() if k != "extra"}, **self.extra}

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path | str = "summary.json") -> RunSummary:
        """A summary read back; one without a field it must hold is :class:`DamagedFile`."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        for key in ("student_top1", "wall_time_s"):  # what every summary holds
            if not isinstance(data.get(key), int | float):
                raise DamagedFile(Path(path), f"no {key}", "")
        for key in ("teacher_top1", "student_best_top1", "student_ema_top1", "cpu_time_s", "teacher_cache_cpu_s"):
            if not isinstance(data.get(key), int | float | None):
                raise DamagedFile(Path(path), f"{key} is not a number", "")
        if not isinstance(data.get("deployed") or {}, dict):
            raise DamagedFile(Path(path), "deployed is not a JSON object", "")
        stages = data.get("stages") or []
        if not all(isinstance(s, dict) and isinstance(s.get("top1"), int | float) for s in stages):
            raise DamagedFile(Path(path), "stages are not (name, top1) records", "")
        links = data.get("assistants") or []
        if not all(isinstance(a, dict) and isinstance(a.get("top1"), int | float | None) for a in links):
            raise DamagedFile(Path(path), "assistants are not (model, top1, run_dir) records", "")
        values = {k: v for k, v in data.items() if k in known}
        values["stages"] = [StageResult(name=str(s.get("name")), top1=s["top1"]) for s in stages]
        values["assistants"] = [
            AssistantResult(model=str(a.get("model")), top1=a.get("top1"), run_dir=a.get("run_dir")) for a in links
        ]
        values["deployed"] = data.get("deployed") or {}
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def read(cls, path: Path, remedy: str = "") -> RunSummary:
        return cls.from_json(read_json(path, remedy), path)
