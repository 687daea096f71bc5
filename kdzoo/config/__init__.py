"""The run configuration: typed sections (:mod:`.schema`), YAML + ``--set`` loading (:mod:`.loader`),
and the dict-to-dataclass conversion with one-line errors (:mod:`.typed`)."""

from kdzoo.config.loader import config_from_dict, load_config, merge, parse_override, read_yaml
from kdzoo.config.schema import (
    CORE_SECTIONS,
    AssistantConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    StudentConfig,
    TeacherConfig,
    TeacherTrainConfig,
    TrainConfig,
)
from kdzoo.config.typed import as_dict, build

__all__ = [
    "CORE_SECTIONS",
    "AssistantConfig",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "StudentConfig",
    "TeacherConfig",
    "TeacherTrainConfig",
    "TrainConfig",
    "as_dict",
    "build",
    "config_from_dict",
    "load_config",
    "merge",
    "parse_override",
    "read_yaml",
]
