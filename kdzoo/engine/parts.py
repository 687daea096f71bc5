"""The record a run is built into (by :mod:`kdzoo.engine.build`) and trained from (by the loop)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdzoo.api import Stage
from kdzoo.config import RunConfig
from kdzoo.data import DataBundle, DistInfo
from kdzoo.engine.objective import Objective
from kdzoo.engine.teacher_cache import TeacherOutputCache
from kdzoo.registry import Registry


@dataclass
class RunParts:
    """Everything a run is made of. ``teacher_cache`` replaces the teacher model when its outputs
    are cached; ``teacher_metrics`` is the teacher's validation accuracy once known."""

    config: RunConfig
    registry: Registry
    dist: DistInfo
    device: torch.device
    data: DataBundle
    student: nn.Module
    objective: Objective
    stages: list[Stage]
    scaler: torch.amp.GradScaler
    teacher_cache: TeacherOutputCache | None
    teacher_metrics: dict[str, float] | None
    show_progress: bool | None
    label: str = ""
