"""The engine: building a run (:mod:`.build`) and the loop that trains it (:mod:`.loop`), with what
they use: the objective, feature extraction, checkpoints, teachers and their caches, processes."""

from kdzoo.engine.build import build_run, build_trainer, obtain_teacher, pick_device
from kdzoo.engine.loop import Trainer
from kdzoo.engine.objective import Objective, build_objective
from kdzoo.engine.parts import RunParts
from kdzoo.engine.state import Position, RunState

__all__ = [
    "Objective",
    "Position",
    "RunParts",
    "RunState",
    "Trainer",
    "build_objective",
    "build_run",
    "build_trainer",
    "obtain_teacher",
    "pick_device",
]
