"""The run configuration as typed dataclasses: the five core sections and the whole run.

A method's own section is typed by the method's config class (see :mod:`kdzoo.config.loader`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from kdzoo.config.typed import as_dict
from kdzoo.errors import KdzooError


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
    # torch.compile the per-step distillation work too (the methods' terms and their weighting): at
    # small steps each of its ops is a kernel launch; falls back to eager in one line where it fails
    compile_objective: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"  # reduce-overhead: CUDA graphs
    # torch.compile's backend for both (torch._dynamo.list_backends()); aot_eager traces without making kernels
    compile_backend: str = "inductor"
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
