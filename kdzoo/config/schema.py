"""The run configuration as typed dataclasses: the five core sections and the whole run.

A method's own section is typed by the method's config class (see :mod:`kdzoo.config.loader`). Every
field has one line of help (``metadata["help"]``): :func:`config_keys` reads them with the defaults, for
``kdzoo show --config`` (:func:`config_yaml`) and ``docs/config.md`` (``scripts/gen_config_docs.py``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from kdzoo.config.checks import at_least, between, non_negative, positive, shown
from kdzoo.config.typed import as_dict
from kdzoo.errors import KdzooError

MIN_IMG_SIZE = 8  # the smallest built-in images (digits) are 8x8; below that a model sees a few pixels
MAX_SEED = 2**32 - 1  # numpy's seeds are unsigned 32-bit


@dataclass
class ModelConfig:
    """A timm model: ``timm.create_model(model, **kwargs)``."""

    model: str = field(
        default="resnet18",
        metadata={
            "help": "the timm model name, with a pretrained tag if wanted (resnet50.a1_in1k), hf-hub:ORG/REPO, "
            "local-dir:PATH, or one a plugin registers (resnet8x4)"
        },
    )
    kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "more keyword arguments for timm.create_model (num_classes, in_chans: the data's unless given)"
        },
    )
    pretrained: bool = field(
        default=False,
        metadata={
            "help": "start from timm's pretrained weights: from the Hugging Face cache, else downloaded by timm "
            "(offline: one line saying what to fill)"
        },
    )
    checkpoint: str | None = field(
        default=None,
        metadata={"help": "a weights file to load (checked against the architecture); a teacher's is used as it is"},
    )


@dataclass
class StudentConfig(ModelConfig):
    model: str = field(
        default="mobilenetv3_small_050", metadata={"help": "the timm model name (or one a plugin registers)"}
    )


@dataclass
class DataConfig:
    name: str = field(
        default="digits",
        metadata={
            "help": "the dataset: digits (embedded), fashion_mnist, cifar10, cifar100, imagefolder, synthetic, "
            "hfds/NAME or torch/NAME (timm's readers), wds/PATH or hfids/NAME (streamed), or one a plugin adds "
            "(kdzoo list --datasets)"
        },
    )
    train_split: str = field(
        default="train", metadata={"help": "hfds/, torch/ datasets: the split trained on (timm's create_dataset)"}
    )
    val_split: str = field(default="validation", metadata={"help": "hfds/, torch/ datasets: the split evaluated on"})
    root: str | None = field(
        default=None,
        metadata={"help": "the dataset's folder (null: the dataset's usual place, e.g. data/); never downloaded"},
    )
    img_size: int = field(default=32, metadata={"help": "images are resized to img_size x img_size for both models"})
    batch_size: int = field(default=64, metadata={"help": "training batch size (under torchrun: the global batch)"})
    eval_batch_size: int = field(default=256, metadata={"help": "batch size for evaluation"})
    num_workers: int = field(
        default=0, metadata={"help": "DataLoader workers for imagefolder (0: min(4, CPUs)); in-memory data needs none"}
    )
    augment: bool = field(
        default=True, metadata={"help": "the dataset's augmentation (random crops, and flips where they fit)"}
    )
    train_limit: int | None = field(
        default=None,
        metadata={"help": "N training samples only, the same number from every class (seeded); null: all of them"},
    )
    views: int = field(
        default=0,
        metadata={"help": "more than 0: each sample has this many fixed augmented views (epoch e uses view e % views)"},
    )
    # streamed datasets (wds/, hfids/): trained by steps in one order for any number of processes
    steps_per_epoch: int | None = field(
        default=None,
        metadata={"help": "wds/, hfids/: training steps per epoch (null: the samples the stream states / batch_size)"},
    )
    stream_partitions: int = field(
        default=0,
        metadata={
            "help": "wds/, hfids/: the stream is read as this many partitions of its shards, each batch taking "
            "equally from each; runs with the same value train alike on any process count dividing it "
            "(0: one per process)"
        },
    )
    shuffle_buffer: int = field(
        default=1000, metadata={"help": "wds/, hfids/: samples each partition shuffles among (0: stored order)"}
    )
    # timm's data pipeline (timm.data.create_transform) for file-backed data (imagefolder)
    auto_augment: str | None = field(
        default=None,
        metadata={"help": "imagefolder: timm's auto-augment policy, e.g. rand-m9-mstd0.5-inc1 (RandAugment)"},
    )
    re_prob: float = field(default=0.0, metadata={"help": "imagefolder: random erasing's probability per image"})
    re_mode: Literal["const", "rand", "pixel"] = field(
        default="pixel", metadata={"help": "imagefolder: what random erasing fills with"}
    )
    color_jitter: float | None = field(
        default=None, metadata={"help": "imagefolder: colour jitter's strength (null: none; off under auto_augment)"}
    )
    scale: list[float] = field(
        default_factory=lambda: [0.35, 1.0],
        metadata={"help": "imagefolder: RandomResizedCrop's range of the area kept (timm's default: [0.08, 1.0])"},
    )
    hflip: float = field(default=0.5, metadata={"help": "imagefolder: the probability of a horizontal flip"})
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = field(
        default=None,
        metadata={"help": "how images are resized (null: a pretrained student's own, else bilinear)"},
    )
    crop_pct: float | None = field(
        default=None,
        metadata={
            "help": "imagefolder: evaluation's centre crop, as a share of the resized image "
            "(null: a pretrained student's own, else 0.875)"
        },
    )
    # on the batch, for every dataset: the teacher sees the mixed images too
    mixup: float = field(default=0.0, metadata={"help": "mixup's alpha (0: off); soft targets reach the loss"})
    cutmix: float = field(default=0.0, metadata={"help": "cutmix's alpha (0: off); with mixup, one of them per batch"})
    mix_prob: float = field(default=1.0, metadata={"help": "the probability that a batch is mixed"})
    mix_switch_prob: float = field(
        default=0.5, metadata={"help": "with mixup and cutmix both on: the probability of cutmix for a batch"}
    )

    def validate(self, where: str) -> None:
        positive(self, where, "batch_size", "eval_batch_size")
        at_least(self, where, MIN_IMG_SIZE, "img_size")
        non_negative(self, where, "num_workers", "views", "mixup", "cutmix", "stream_partitions", "shuffle_buffer")
        # a negative limit would slice off the end (all but N samples), 0 would train on nothing
        at_least(self, where, 1, "train_limit", "steps_per_epoch")
        between(self, where, 0.0, 1.0, "re_prob", "hflip", "mix_prob", "mix_switch_prob")
        between(self, where, 0.05, 1.0, "crop_pct")
        positive(self, where, "color_jitter")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise KdzooError(
                f"config key '{where}.scale': must be [low, high] with 0 < low <= high <= 1, got {self.scale}"
            )

    @property
    def mixing(self) -> bool:
        return self.mix_prob > 0 and (self.mixup > 0 or self.cutmix > 0)


@dataclass
class OptimConfig:
    name: str = field(
        default="sgd",
        metadata={
            "help": "the optimizer, made by timm's create_optimizer_v2: sgd (momentum SGD), adamw, adam, lamb, lars, "
            "... (any name of timm.optim.list_optimizers())"
        },
    )
    lr: float = field(default=0.05, metadata={"help": "the learning rate at the start of each stage (after warmup)"})
    momentum: float = field(default=0.9, metadata={"help": "SGD's momentum, in [0, 1)"})
    weight_decay: float = field(default=5e-4, metadata={"help": "weight decay (decoupled for adamw)"})
    decay_norm_bias: bool = field(
        default=True,
        metadata={
            "help": "weight decay on biases and norm weights too (RepDistiller's setting); false: only on "
            "weights of 2+ dimensions, not on the model's no_weight_decay() (timm's and DeiT's)"
        },
    )
    nesterov: bool = field(default=False, metadata={"help": "SGD with Nesterov momentum"})
    scheduler: Literal["cosine", "multistep", "constant"] = field(
        default="cosine",
        metadata={"help": "the learning-rate schedule over each stage (timm.scheduler), updated every step"},
    )
    milestones: list[int] = field(
        default_factory=list,
        metadata={"help": "multistep: the epochs of the stage at which the rate is multiplied by gamma"},
    )
    gamma: float = field(default=0.1, metadata={"help": "multistep: the factor applied at each milestone"})
    min_lr: float = field(default=0.0, metadata={"help": "cosine: the rate the schedule ends at"})
    warmup_epochs: float = field(
        default=0.0,
        metadata={
            "help": "epochs (fractions allowed) over which the rate rises linearly from warmup_lr to lr, step by "
            "step, before the schedule"
        },
    )
    warmup_lr: float = field(default=0.0, metadata={"help": "the rate at the first step of the warmup"})
    clip_grad: float | None = field(
        default=None, metadata={"help": "clip the gradients to this norm (or value, or AGC ratio); null: no clipping"}
    )
    clip_mode: Literal["norm", "value", "agc"] = field(
        default="norm", metadata={"help": "what clip_grad bounds (timm's dispatch_clip_grad)"}
    )

    def validate(self, where: str) -> None:
        positive(self, where, "lr", "gamma")
        non_negative(self, where, "weight_decay", "milestones", "min_lr", "warmup_epochs", "warmup_lr")
        positive(self, where, "clip_grad")
        if not 0 <= self.momentum < 1:  # 1 never forgets a gradient: the steps grow without bound
            raise KdzooError(f"config key '{where}.momentum': must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.name == "sgd" and self.momentum == 0:
            raise KdzooError(f"config key '{where}.nesterov': Nesterov momentum needs {where}.momentum > 0")
        _check_optimizer(self.name, where)


def _check_optimizer(name: str, where: str) -> None:
    if name in ("sgd", "adamw", "adam"):  # the usual ones, without importing timm's optimizers
        return
    from timm.optim import list_optimizers

    known = list_optimizers()
    if name not in known:
        from kdzoo.errors import close_matches

        raise KdzooError(
            f"config key '{where}.name': unknown optimizer {shown(name)}{close_matches(name, known)}; "
            f"'sgd', 'adamw', 'adam', 'lamb', 'lars' or another of timm.optim.list_optimizers()"
        )


@dataclass
class TeacherTrainConfig:
    """How kdzoo trains a teacher it has to train: the teacher's own settings, never the student's.

    Everything here, with the architecture, the dataset's contents and image size, is the
    trained-teacher cache key, and nothing else: two runs that differ only in the student's settings
    (``data.train_limit``, ``data.augment`` and ``data.views`` included) share one teacher."""

    epochs: int = field(
        default=8, metadata={"help": "epochs to train the teacher (0: use the pretrained weights as they are)"}
    )
    seed: int = field(default=0, metadata={"help": "the seed of the teacher's initialisation and data order"})
    batch_size: int = field(default=64, metadata={"help": "the teacher's training batch size"})
    optim: OptimConfig = field(
        default_factory=OptimConfig, metadata={"help": "the teacher's optimizer and schedule (the keys of optim)"}
    )
    augment: bool = field(
        default=True, metadata={"help": "the data's own augmentation (random crops and flips) while the teacher trains"}
    )
    train_limit: int | None = field(
        default=None,
        metadata={"help": "N training samples only, the same number from every class (seeded); null: all of them"},
    )

    def validate(self, where: str) -> None:
        non_negative(self, where, "epochs")
        positive(self, where, "batch_size")
        at_least(self, where, 1, "train_limit")
        _check_seed(self.seed, where)


@dataclass
class AssistantConfig:
    """A teacher assistant (TAKD, Mirzadeh et al. AAAI 2020): a model between the teacher and the
    student, distilled from the link before it by this run's methods and settings (its own epochs),
    trained once and cached, then teaching the next link."""

    model: str = field(metadata={"help": "the assistant's timm model name (or one a plugin registers)"})
    kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "more keyword arguments for timm.create_model"}
    )
    checkpoint: str | None = field(
        default=None, metadata={"help": "an assistant trained before: its weights file, used as it is (not trained)"}
    )
    epochs: int | None = field(
        default=None, metadata={"help": "epochs to distil the assistant (null: train.epochs, the student's)"}
    )

    def validate(self, where: str) -> None:
        at_least(self, where, 1, "epochs")


@dataclass
class TeacherConfig(ModelConfig):
    """Where the teacher comes from, in this order: ``checkpoint`` (a file, used as is); else a
    timm model (``pretrained`` weights, downloaded if not cached) that kdzoo trains with its
    own ``train`` settings on the run's data first, cached on disk and reused.
    ``train.epochs: 0`` uses the pretrained weights as they are."""

    train: TeacherTrainConfig = field(
        default_factory=TeacherTrainConfig,
        metadata={"help": "how kdzoo trains the teacher when no checkpoint is given (trained once, cached, reused)"},
    )
    img_size: int | None = field(
        default=None,
        metadata={
            "help": "the teacher's input size (null: data.img_size); its input is made from the student's batch, "
            "re-normalised (a pretrained teacher: its own mean and std) and resized on the device"
        },
    )
    cache: bool = field(
        default=False,
        metadata={
            "help": "the teacher's outputs computed once per sample, then reused (offline KD); "
            "needs fixed inputs: data.augment=false or data.views (in memory or file-backed)"
        },
    )
    cache_topk: int | None = field(
        default=None,
        metadata={
            "help": "teacher.cache: store each sample's K largest logits (fp16, with their classes) and one logit "
            "sharing the rest of the probability evenly, not all of them; null: every logit"
        },
    )
    assistants: list[AssistantConfig] = field(
        default_factory=list,
        metadata={
            "help": "teacher assistants (TAKD): the chain teacher -> assistants -> student, each link distilled by "
            "this run's methods from the one before and cached; each {model, kwargs, checkpoint, epochs}, "
            "e.g. [{model: resnet18}]"
        },
    )

    def student_teacher(self) -> ModelConfig:
        """The architecture the student learns from: the last assistant's, else this teacher's."""
        if not self.assistants:
            return ModelConfig(model=self.model, kwargs=dict(self.kwargs))
        last = self.assistants[-1]
        return ModelConfig(model=last.model, kwargs=dict(last.kwargs))

    def validate(self, where: str) -> None:
        at_least(self, where, MIN_IMG_SIZE, "img_size")
        at_least(self, where, 1, "cache_topk")


@dataclass
class TrainConfig:
    epochs: int = field(
        default=12, metadata={"help": "epochs of the student's training (a method's schedule divides them into stages)"}
    )
    seed: int = field(
        default=0,
        metadata={"help": "the seed of the student's initialisation, the batch order and augmentation"},
    )
    device: str = field(default="auto", metadata={"help": "auto (CUDA when there is one), cpu, cuda, cuda:1, ..."})
    out_dir: str = field(default="runs", metadata={"help": "the folder that holds run directories"})
    name: str | None = field(
        default=None,
        metadata={
            "help": "the run directory's name inside out_dir (null: from methods, student and seed, kd-resnet18-seed0)"
        },
    )
    log_every: int = field(
        default=10, metadata={"help": "steps between progress updates and NaN/inf checks (the loop's only host syncs)"}
    )
    loggers: list[str] = field(
        default_factory=lambda: ["tensorboard"],
        metadata={
            "help": "experiment trackers mirroring metrics.jsonl: tensorboard, wandb (kdzoo[wandb]), mlflow "
            "(kdzoo[mlflow]), or one a plugin adds (kdzoo list --loggers)"
        },
    )
    # bf16/fp16: the models' forward passes under autocast (fp16 adds a grad scaler); fp64: every model,
    # method module and batch in float64, slow, for checking that results are exact (N processes = 1)
    precision: Literal["fp32", "bf16", "fp16", "fp64"] = field(
        default="fp32",
        metadata={
            "help": "bf16/fp16: the forward passes under autocast (fp16 adds a grad scaler); "
            "fp64: everything in float64, slow, to check that results are exact"
        },
    )
    channels_last: bool = field(
        default=False, metadata={"help": "the models in channels-last memory format (faster convolutions on GPUs)"}
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the models' forward passes"})
    # torch.compile the per-step distillation work too (the methods' terms and their weighting): at
    # small steps each of its ops is a kernel launch; falls back to eager in one line where it fails
    compile_objective: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the methods' terms and their weighting too (eager, said in one line, where it fails)"
        },
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = field(
        default="default", metadata={"help": "torch.compile's mode (reduce-overhead: CUDA graphs)"}
    )
    compile_backend: str = field(
        default="inductor",
        metadata={
            "help": "torch.compile's backend (torch._dynamo.list_backends()); aot_eager traces without making kernels"
        },
    )
    checkpoint_every: int = field(
        default=0, metadata={"help": "also checkpoint every N steps inside an epoch (0: at epoch ends only)"}
    )
    nonfinite: Literal["stop", "skip"] = field(
        default="stop", metadata={"help": "a NaN/inf loss stops the run, or skips that step"}
    )
    accumulate: int = field(
        default=1,
        metadata={
            "help": "split each batch into this many micro-batches whose gradients add up to one update "
            "(data.batch_size stays the update's batch; less memory, the same step)"
        },
    )
    ema: bool = field(
        default=False,
        metadata={"help": "keep an EMA of the student's weights (timm's ModelEmaV3), evaluated each epoch and saved"},
    )
    ema_decay: float = field(default=0.9998, metadata={"help": "the EMA's decay per update"})
    ema_warmup: bool = field(default=False, metadata={"help": "the EMA's decay warms up from 0 (timm's use_warmup)"})
    label_smoothing: float = field(
        default=0.0, metadata={"help": "the core's cross-entropy against smoothed labels (with mixup: its soft ones)"}
    )

    def validate(self, where: str) -> None:
        if self.epochs < 1:
            raise KdzooError(
                f"config key '{where}.epochs': must be >= 1 (a run trains at least one epoch), got {self.epochs}"
            )
        positive(self, where, "log_every", "accumulate")
        non_negative(self, where, "checkpoint_every")
        between(self, where, 0.0, 0.99, "label_smoothing")
        if not 0 <= self.ema_decay < 1:
            raise KdzooError(f"config key '{where}.ema_decay': must be in [0, 1), got {self.ema_decay}")
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

    methods: list[str] = field(
        metadata={"help": "the methods to apply, in selection order (or --method); their terms add up; required"}
    )
    teacher: TeacherConfig = field(
        default_factory=TeacherConfig,
        metadata={"help": "the teacher: a checkpoint, or a timm model kdzoo trains first (and caches)"},
    )
    teachers: list[TeacherConfig] = field(
        default_factory=list,
        metadata={
            "help": "several teachers (each a teacher: section; then leave teacher: out): methods learn from their "
            "ensemble, the mean of their logits (the geometric mean of their soft targets at any temperature), "
            "and a method that takes every teacher's outputs gets them (kdzoo_compute_losses' teachers)"
        },
    )
    student: StudentConfig = field(
        default_factory=StudentConfig, metadata={"help": "the student: the timm model distilled"}
    )
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "the dataset, its batches and augmentation"})
    optim: OptimConfig = field(
        default_factory=OptimConfig,
        metadata={"help": "the student's optimizer and schedule (a stage may override them)"},
    )
    train: TrainConfig = field(
        default_factory=TrainConfig,
        metadata={"help": "the run: epochs, seed, device, run directory, precision, compiling"},
    )
    recipe: str | None = field(
        default=None,
        metadata={
            "help": "what this config reproduces and its source (a paper's table, a repository's config), "
            "shown by kdzoo show FILE and kept with the run"
        },
    )
    method_configs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "each selected method's config: in a file, a top-level section named after it (kdzoo show METHOD)"
        },
    )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"methods": list(self.methods), "recipe": self.recipe}
        out.update({name: as_dict(getattr(self, name)) for name in CORE_SECTIONS})
        out["teachers"] = as_dict(self.teachers)
        out.update({name: as_dict(cfg) for name, cfg in self.method_configs.items()})
        return out

    def taught_by(self) -> str:
        """The teacher the student learns from, as runs name it: the teacher, the last of its assistants,
        or several teachers' ensemble (``a + b``)."""
        if self.teachers:
            return " + ".join(t.model for t in self.teachers)
        return self.teacher.student_teacher().model


# ----------------------------------------------------------------------------- the reference
@dataclass(frozen=True)
class ConfigKey:
    """One key of a run config file, as ``kdzoo show --config`` and ``docs/config.md`` show it."""

    path: tuple[str, ...]  # ("teacher", "train", "optim", "lr")
    type: str  # as a YAML file holds it: "int | null", "sgd | adamw | adam"; "section" for a nested section
    default: Any  # plain data, as in a YAML file (None for a section)
    help: str
    required: bool = False

    @property
    def name(self) -> str:
        return ".".join(self.path)

    @property
    def yaml_default(self) -> str:
        """The default as a YAML file writes it (``null``, ``false``, ``[]``); empty for a section."""
        import yaml

        if self.type == "section":
            return ""
        return yaml.safe_dump(self.default, default_flow_style=True, width=10**6).removesuffix("...\n").strip()


def config_keys() -> list[ConfigKey]:
    """Every key of a run config file but the methods' own sections, in file order, each section before
    its keys: ``methods`` and the core sections, read from the dataclasses above and their help."""
    hints = typing.get_type_hints(RunConfig)
    return [k for f in dataclasses.fields(RunConfig) if f.name != "method_configs" for k in _keys(f, hints, ())]


def _keys(f: dataclasses.Field, hints: dict[str, Any], parent: tuple[str, ...]) -> list[ConfigKey]:
    hint, path, text = hints[f.name], (*parent, f.name), f.metadata.get("help", "")
    if dataclasses.is_dataclass(hint):
        inner = typing.get_type_hints(hint)
        return [
            ConfigKey(path, "section", None, text),
            *(k for g in dataclasses.fields(hint) for k in _keys(g, inner, path)),
        ]
    if f.default is not dataclasses.MISSING:
        return [ConfigKey(path, _type_name(hint), as_dict(f.default), text)]
    if f.default_factory is not dataclasses.MISSING:
        return [ConfigKey(path, _type_name(hint), as_dict(f.default_factory()), text)]
    empty = (typing.get_origin(hint) or hint)()  # a required key (``methods``) is shown with its empty value
    return [ConfigKey(path, _type_name(hint), empty, text, required=True)]


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        return " | ".join(str(a) for a in args)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " | ".join(_type_name(a) for a in args)
    if args:
        return f"{typing.get_origin(hint).__name__}[{', '.join(_type_name(a) for a in args)}]"
    return "null" if hint is type(None) else "Any" if hint is Any else hint.__name__


def config_yaml(section: str | None = None, methods: list[str] | tuple[str, ...] = ()) -> str:
    """The run config as YAML with each key's help as a comment above it and its default as its value:
    every key, or one section's (``train``). ``methods`` fills the ``methods`` key."""
    lines = []
    for key in config_keys():
        if section is not None and key.path[0] != section:
            continue
        indent = "  " * (len(key.path) - 1)
        if len(key.path) == 1 and lines:
            lines.append("")
        lines.append(f"{indent}# {key.help}")
        if key.path == ("methods",) and methods:
            key = dataclasses.replace(key, default=list(methods))
        lines.append(f"{indent}{key.path[-1]}: {key.yaml_default}".rstrip())
    return "\n".join(lines)
