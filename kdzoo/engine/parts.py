"""The record a run is built into (by :mod:`kdzoo.engine.build`) and trained from (by the loop)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdzoo.api import LoggerInfo, Stage
from kdzoo.config import RunConfig
from kdzoo.data import DataBundle, DistInfo
from kdzoo.engine.step import Step


@dataclass(frozen=True)
class RunParts:
    """Everything a run is made of: its config, processes and device, data, the step (the objective
    with its teacher, the optimizer's settings, precision, processes) and the schedule of stages;
    ``show_progress`` and ``label`` say how it reports (``None``: when a terminal is attached)."""

    config: RunConfig
    dist: DistInfo
    device: torch.device
    data: DataBundle
    step: Step
    stages: list[Stage]
    show_progress: bool | None = None
    label: str = ""
    #: for each selected method (as the config names it): the distribution and version that supplied
    #: it, its plugin (entry point) and the name it registered, recorded in config.json and summary.json
    method_sources: dict[str, dict[str, str]] = field(default_factory=dict)
    #: the experiment trackers ``train.loggers`` chose, made by the loop on the main process
    loggers: tuple[LoggerInfo, ...] = ()
    #: each link of the teacher-assistant chain (``teacher.assistants``): its run folder in the cache, or
    #: ``None`` for one given by its weights file
    assistant_runs: tuple[Path | None, ...] = ()
