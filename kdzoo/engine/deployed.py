"""Rebuilding what a run deploys, from its config and the installed plugins, for weights saved apart.

A run exports the network it deploys (``student.safetensors``): the student, or what a method builds
around it (SimKD's projector + reused teacher classifier). Scoring or loading that file later needs
the same network without weights: it is built again here by the same plugin code, never from the
file (which holds tensors only).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from torch import Tensor, nn

from kdzoo import checkpoint
from kdzoo.config import RunConfig, config_from_dict
from kdzoo.engine.extract import describe
from kdzoo.engine.objective import Objective
from kdzoo.errors import KdzooError
from kdzoo.models import create_model
from kdzoo.registry import Registry, registry


@dataclasses.dataclass
class Deployed:
    """The deployed network, and the student and method modules whose parameters it shares."""

    network: nn.Module
    student: nn.Module
    modules: nn.ModuleDict

    def load_checkpoint_weights(self, student: dict[str, Tensor], modules: dict[str, Tensor]) -> None:
        """Weights from a run's ``last.pt`` (student and method modules stored apart)."""
        self.student.load_state_dict(student)
        own = {k: v for k, v in modules.items() if k.split(".", 1)[0] in self.modules}
        self.modules.load_state_dict(own)


def build_deployed(config: RunConfig, num_classes: int, in_chans: int, reg: Registry | None = None) -> Deployed:
    """A weightless build of what a run of ``config`` deploys."""
    reg = reg or registry()
    fresh = dataclasses.replace(config.student, pretrained=False, checkpoint=None)
    student = create_model(fresh, "student", num_classes, in_chans)
    infos = [reg.get(name) for name in config.methods]
    methods = {info.name: info.factory(config.method_configs[info.name]) for info in infos}
    # only the methods that change the deployed network: the others' modules (a memory bank) are not needed
    deploying = {name: m for name, m in methods.items() if callable(getattr(m, "kdzoo_deployed_model", None))}
    if not deploying:
        return Deployed(student, student, nn.ModuleDict())
    learned_from = config.teacher.student_teacher()  # the teacher, or the last of its assistants
    teacher = create_model(
        dataclasses.replace(config.teacher, model=learned_from.model, kwargs=learned_from.kwargs, pretrained=False,
                            checkpoint=None, assistants=[]),
        "teacher", num_classes, in_chans,
    )  # fmt: skip
    s_info = describe(student, config.student.model, config.data.img_size)
    t_info = describe(teacher, learned_from.model, config.data.img_size)
    objective = Objective(deploying, student, s_info, None, t_info)
    network = objective.deployed_model()
    objective.close()
    return Deployed(network, student, objective.method_modules)


def load_student(path: str | Path) -> nn.Module:
    """The network a run deployed, with its weights, from the run's exported ``student.safetensors``
    (its ``config.json`` and ``student.json`` beside it), in eval mode."""
    path = Path(path)
    config_file, record_file = path.parent / "config.json", path.parent / "student.json"
    for needed in (path, config_file, record_file):
        if not needed.is_file():
            raise KdzooError(f"{needed} not found: load_student reads a run's student.safetensors with the run's files")
    try:
        config = config_from_dict(json.loads(config_file.read_text()), registry().config_classes())
        kwargs = json.loads(record_file.read_text())["kwargs"]
        deployed = build_deployed(config, kwargs["num_classes"], kwargs["in_chans"])
    except (ValueError, KeyError, TypeError) as exc:  # JSON that is cut or not a run's
        damaged = f"{config_file} or {record_file} is damaged ({type(exc).__name__})"
        raise KdzooError(f"{damaged}; export the run again") from None
    try:
        deployed.network.load_state_dict(checkpoint.load(path))  # a damaged file is one line there
    except RuntimeError as exc:
        raise KdzooError(f"{path} does not hold this run's student ({str(exc).splitlines()[0][:200]})") from None
    return deployed.network.eval()
