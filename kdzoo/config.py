"""The run configuration: YAML files + ``--set`` overrides -> typed dataclasses.

Layout of a config file::

    methods: [fitnets]          # or --method on the command line
    teacher: {model: resnet18, train: {epochs: 8}}
    student: {model: mobilenetv3_small_050}
    data:    {name: digits, img_size: 32, batch_size: 64}
    optim:   {name: sgd, lr: 0.05, scheduler: cosine}
    train:   {epochs: 12, seed: 0}
    fitnets: {schedule: joint}  # one section per method, typed by the method's own config class

The core sections are fixed; a method's section belongs to the method (so a new method never edits
this file). ``--set key=value`` takes a dotted key; a bare key that is not a core section is looked
up in the selected methods' configs (``--set schedule=two_stage``).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kdzoo.errors import KdzooError, close_matches
from kdzoo.typed import as_dict, build


@dataclass
class ModelConfig:
    """A timm model: ``timm.create_model(model, **kwargs)``."""

    model: str = "resnet18"
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    checkpoint: str | None = None


@dataclass
class StudentConfig(ModelConfig):
    model: str = "mobilenetv3_small_050"


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None
    img_size: int = 32
    batch_size: int = 64
    eval_batch_size: int = 256
    num_workers: int = 0  # DataLoader workers for imagefolder (0: min(4, CPUs)); in-memory data needs none
    augment: bool = True
    train_limit: int | None = None  # first N training samples only (smoke tests)
    views: int = 0  # >0: each sample has this many fixed augmented views (epoch e uses view e % views)

    def validate(self, where: str) -> None:
        for key in ("img_size", "batch_size", "eval_batch_size"):
            if getattr(self, key) <= 0:
                raise KdzooError(f"config key '{where}.{key}': must be > 0, got {getattr(self, key)}")


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    scheduler: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1

    def validate(self, where: str) -> None:
        if self.lr <= 0:
            raise KdzooError(f"config key '{where}.lr': must be > 0, got {self.lr}")


@dataclass
class TeacherTrainConfig:
    """How kdzoo trains a teacher it has to train: the teacher's own settings, never the student's.

    Everything here (with the architecture and the data) is the trained-teacher cache key, so two
    runs that differ only in the student's settings share one teacher."""

    epochs: int = 8
    seed: int = 0
    batch_size: int = 64
    optim: OptimConfig = field(default_factory=OptimConfig)

    def validate(self, where: str) -> None:
        if self.epochs < 0:
            raise KdzooError(f"config key '{where}.epochs': must be >= 0, got {self.epochs}")
        if self.batch_size <= 0:
            raise KdzooError(f"config key '{where}.batch_size': must be > 0, got {self.batch_size}")


@dataclass
class TeacherConfig(ModelConfig):
    """Where the teacher comes from, in this order: ``checkpoint`` (a file, used as is); else a
    timm model (``pretrained`` weights from the local cache if asked) that kdzoo trains with its
    own ``train`` settings on the run's data first, cached on disk and reused.
    ``train.epochs: 0`` uses the pretrained weights as they are."""

    train: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)
    cache: bool = False  # store the teacher's outputs once per sample (offline KD); see data.views


@dataclass
class TrainConfig:
    epochs: int = 12
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs"
    name: str | None = None
    log_every: int = 10
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype; fp16 adds a grad scaler
    channels_last: bool = False
    compile: bool = False  # torch.compile the models' forward passes
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0: at epoch ends only)
    nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss stops the run, or skips that step

    def validate(self, where: str) -> None:
        if self.epochs < 1:
            raise KdzooError(
                f"config key '{where}.epochs': must be >= 1 (a run trains at least one epoch), got {self.epochs}"
            )


CORE_SECTIONS: dict[str, type] = {
    "teacher": TeacherConfig,
    "student": StudentConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}


@dataclass
class RunConfig:
    """Everything one run needs; ``method_configs`` holds each selected method's typed config."""

    methods: list[str]
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method_configs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"methods": list(self.methods)}
        out.update({name: as_dict(getattr(self, name)) for name in CORE_SECTIONS})
        out.update({name: as_dict(cfg) for name, cfg in self.method_configs.items()})
        return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KdzooError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise KdzooError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KdzooError(f"config file {path} must hold a mapping at the top level")
    return data


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'optim.lr=0.1'`` -> (['optim', 'lr'], 0.1); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise KdzooError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=0.1")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _qualify(path: list[str], methods: list[str], method_fields: dict[str, set[str]], known: set[str]) -> list[str]:
    """Route a bare ``--set schedule=...`` to the one selected method whose config has it."""
    if path[0] in CORE_SECTIONS or path[0] in known or path[0] == "methods":
        return path
    owners = [m for m in methods if path[0] in method_fields.get(m, set())]
    if len(owners) == 1:
        return [owners[0], *path]
    if len(owners) > 1:
        raise KdzooError(
            f"--set {'.'.join(path)}: ambiguous, methods {', '.join(owners)} all have it; "
            f"write e.g. --set {owners[0]}.{'.'.join(path)}=..."
        )
    choices = [*CORE_SECTIONS, *known, *(f for m in methods for f in method_fields.get(m, ()))]
    raise KdzooError(f"unknown config key '{'.'.join(path)}'{close_matches(path[0], choices)}")


def load_config(
    files: list[str | Path],
    overrides: list[str],
    methods: list[str],
    method_config_classes: dict[str, type],
    failures: dict[str, str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Build a :class:`RunConfig` from YAML ``files`` (merged in order), ``--set`` overrides and
    the ``--method`` names; ``method_config_classes`` maps every known method to its config class.
    ``base`` (a :meth:`RunConfig.to_dict`) is what the files and overrides apply to."""
    data: dict[str, Any] = copy.deepcopy(base or {})
    for path in files:
        data = merge(data, read_yaml(path))
    selected = list(methods) or data.get("methods") or []
    # only for routing bare --set keys; a malformed 'methods' value is reported below, by key
    selected = [selected] if isinstance(selected, str) else selected if isinstance(selected, list) else []
    method_fields = {name: {f.name for f in dataclasses.fields(cls)} for name, cls in method_config_classes.items()}
    for text in overrides:
        path, value = parse_override(text)
        _set_path(data, _qualify(path, selected, method_fields, set(method_config_classes)), value)
    if methods:
        data["methods"] = list(methods)
    selected = data.pop("methods", None) or []
    if isinstance(selected, str):
        selected = [selected]
    if not isinstance(selected, list) or not all(isinstance(m, str) for m in selected):
        raise KdzooError(f"config key 'methods': expected a list of method names, got {selected!r}")
    if not selected:
        raise KdzooError(
            "no method selected: pass --method NAME (known: " + ", ".join(sorted(method_config_classes)) + ")"
        )
    for name in selected:
        if failures and name in failures:
            raise KdzooError(f"method plugin '{name}' failed to load: {failures[name]}")
        if name not in method_config_classes:
            raise KdzooError(
                f"unknown method '{name}'{close_matches(name, method_config_classes)}; "
                f"known methods: {', '.join(sorted(method_config_classes))} (see `kdzoo list`)"
            )
    if len(set(selected)) != len(selected):
        raise KdzooError(f"method selected twice: {selected}")
    _refuse_renamed_keys(data)
    core = {key: build(cls, data.pop(key, None), key) for key, cls in CORE_SECTIONS.items()}
    method_configs = {}
    for key, section in data.items():
        if key not in method_config_classes:
            choices = [*CORE_SECTIONS, "methods", *method_config_classes]
            raise KdzooError(
                f"unknown config key '{key}'{close_matches(str(key), choices)}; top-level keys: {', '.join(choices)}"
            )
        cfg = build(method_config_classes[key], section, key)
        if key in selected:
            method_configs[key] = cfg
    for name in selected:
        method_configs.setdefault(name, build(method_config_classes[name], {}, name))
    return RunConfig(methods=selected, method_configs=method_configs, **core)


RENAMED_KEYS = {("teacher", "train_epochs"): "teacher.train.epochs"}


def _refuse_renamed_keys(data: dict[str, Any]) -> None:
    for (section, key), now in RENAMED_KEYS.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            raise KdzooError(f"config key '{section}.{key}' is now '{now}'; rename it in your config or --set")


def config_from_dict(data: dict[str, Any], method_config_classes: dict[str, type]) -> RunConfig:
    """Rebuild a :class:`RunConfig` saved with :meth:`RunConfig.to_dict` (e.g. in a checkpoint)."""
    data = copy.deepcopy(data)
    methods = data.pop("methods")
    overrides_free = {k: v for k, v in data.items() if k in CORE_SECTIONS or k in methods}
    core = {key: build(cls, overrides_free.get(key), key) for key, cls in CORE_SECTIONS.items()}
    method_configs = {}
    for name in methods:
        if name not in method_config_classes:
            raise KdzooError(f"this checkpoint was made with method '{name}', which is not installed here")
        method_configs[name] = build(method_config_classes[name], overrides_free.get(name), name)
    return RunConfig(methods=methods, method_configs=method_configs, **core)
