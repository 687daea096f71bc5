"""The run configuration as typed dataclasses: the five core sections and the whole run.

A method's own section is typed by the method's config class (see :mod:`kdzoo.config.loader`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from kdzoo.config.checks import at_least, non_negative, positive, shown
from kdzoo.config.typed import as_dict
from kdzoo.errors import KdzooError

MIN_IMG_SIZE = 8  # the smallest built-in images (digits) are 8x8; below that a model sees a few pixels
MAX_SEED = 2**32 - 1  # numpy's seeds are unsigned 32-bit


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
        positive(self, where, "batch_size", "eval_batch_size")
        at_least(self, where, MIN_IMG_SIZE, "img_size")
        non_negative(self, where, "num_workers", "views")
        # a negative limit would slice off the end (all but N samples), 0 would train on nothing
        at_least(self, where, 1, "train_limit")


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
        positive(self, where, "lr", "gamma")
        non_negative(self, where, "weight_decay", "milestones")
        if not 0 <= self.momentum < 1:  # 1 never forgets a gradient: the steps grow without bound
            raise KdzooError(f"config key '{where}.momentum': must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.name == "sgd" and self.momentum == 0:
            raise KdzooError(f"config key '{where}.nesterov': Nesterov momentum needs {where}.momentum > 0")


@dataclass
class TeacherTrainConfig:
    """How kdzoo trains a teacher it has to train: the teacher's own settings, never the student's.

    Everything here, with the architecture, the dataset's contents and image size, is the
    trained-teacher cache key, and nothing else: two runs that differ only in the student's settings
    (``data.train_limit``, ``data.augment`` and ``data.views`` included) share one teacher."""

    epochs: int = 8
    seed: int = 0
    batch_size: int = 64
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: bool = True  # the data's own augmentation (random crops and flips) while the teacher trains
    train_limit: int | None = None  # the first N training samples only (smoke tests); None: all of them

    def validate(self, where: str) -> None:
        non_negative(self, where, "epochs")
        positive(self, where, "batch_size")
        at_least(self, where, 1, "train_limit")
        _check_seed(self.seed, where)


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
    # bf16/fp16: the models' forward passes under autocast (fp16 adds a grad scaler); fp64: every model,
    # method module and batch in float64, slow, for checking that results are exact (N processes = 1)
    precision: Literal["fp32", "bf16", "fp16", "fp64"] = "fp32"
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
        positive(self, where, "log_every")
        non_negative(self, where, "checkpoint_every")
        _check_seed(self.seed, where)
        if self.name:  # None or "": the run names itself
            _check_folder_name(self.name, f"{where}.name")


def _check_seed(seed: int, where: str) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise KdzooError(f"config key '{where}.seed': must be in [0, 2**32 - 1], got {seed}")


def _check_folder_name(name: str, key: str) -> None:
    """The run folder's name, inside ``train.out_dir``: one path component, so nothing lands outside it."""
    if name in (".", "..") or "/" in name or "\\" in name or len(name.encode()) > 255:
        raise KdzooError(
            f"config key '{key}': must be a single folder name (no '/', '\\', '..'; at most 255 bytes), "
            f"got {shown(name)}; set train.out_dir for where it goes"
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
