"""Everything a method plugin touches, in one module: import it as ``kdzoo`` (``kdzoo.Taps``...).

It sits at the bottom of kdzoo: it imports nothing else of kdzoo, so a method author reads one file
to know the contract, and every other part of kdzoo can build on it.

* Registration: :data:`hookimpl`, :class:`MethodInfo`, :func:`registering`.
* What a model offers (read from timm, never from a dummy forward): :class:`ModelInfo`,
  :class:`StageInfo`; pairing stages of two models: :func:`pair_stage`, :func:`pair_stages`,
  :func:`inner_stages`.
* What a method asks for and gets each step: :class:`Taps`, :class:`Summary`, :class:`Outputs`;
  what it may know of the training data when it builds its modules: :class:`TrainingSet`.
* Training phases: :class:`Stage`, :data:`WHOLE_RUN`, :func:`parameters_up_to`; one step's input and
  result: :class:`Batch`, :class:`When`, :class:`StepResult`.
* The run the lifecycle hooks receive: :class:`Run`.
* The loss helpers several methods share: :func:`soft_target_kl`, :func:`full_precision`; errors a user can fix:
  :class:`KdzooError`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pluggy
import torch
import torch.nn.functional as F
from torch import Tensor, nn

hookimpl = pluggy.HookimplMarker("kdzoo")
#: what a method matches: the student's predictions (logit), intermediate features (feature), relations
#: between samples or features (relation), or itself without an external teacher (self)
KINDS = ("logit", "feature", "relation", "self", "other")
#: what a method's terms see under torchrun: the whole global batch, or this process's share of it
BATCHES = ("global", "local")


class KdzooError(Exception):
    """A problem with the user's input (config, models, data, files), stated in one line.

    The command line prints it as one ``Error: ...`` line and exits non-zero; anything else is a
    bug and keeps its traceback."""


# ----------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class MethodInfo:
    """A method as a plugin registers it.

    ``factory(config)`` builds the method object whose ``@hookimpl`` methods implement
    :class:`kdzoo.hookspecs.MethodSpec`; ``config_class`` is a dataclass whose defaults are the
    paper's setting. ``needs_teacher=False`` (or a function of the config) lets the core run
    without an external teacher.

    ``batch`` says what the method's terms see under torchrun (several processes): ``"global"``
    (the default) the outputs of the whole global batch, gathered from every process with their
    gradients, so a term that relates the samples of a batch (RKD's distances, SP's Gram matrix,
    a batch's statistics) is computed as one process computes it; ``"local"`` this process's share
    only, which is enough for a term that is a mean of per-sample values (KD, FitNets) and saves the
    gather. In one process both are the same.
    """

    name: str
    factory: Callable[[Any], object]
    config_class: type
    paper: str
    summary: str
    needs_teacher: bool | Callable[[Any], bool] = True
    kind: str = "other"  #: one of KINDS: what the method matches, for `kdzoo list`
    batch: str = "global"  #: one of BATCHES: what its terms see under torchrun
    #: the names of the terms it returns, when it says (a tuple, or a function of its config giving one,
    #: for terms a setting adds): a clash with another method's, a weight for a term it never returns and
    #: a term it did not declare are then one line when the run is built, and a stage that switches all
    #: of them off never calls its ``kdzoo_compute_losses``
    terms: tuple[str, ...] | Callable[[Any], tuple[str, ...]] | None = None
    #: compute its terms under the run's autocast (``train.precision`` bf16/fp16); by default they are
    #: computed in float32 outside it, from outputs upcast to float32, so no cast is the method's job
    autocast: bool = False
    #: the fewest teachers it distils from: 2 or more for a method that weighs several teachers against
    #: each other (``teachers:``); a run with fewer refuses it in one line, ``kdzoo compare --methods all``
    #: leaves it out
    min_teachers: int = 1
    plugin: str = ""
    distribution: str = ""
    version: str = ""

    def declares(self, term: str) -> bool:
        """Whether this method returns ``term`` (always ``True`` when it declares no terms). Call it on
        the info :meth:`for_config` gives when ``terms`` depends on the config."""
        return self.terms is None or callable(self.terms) or term in self.terms

    def for_config(self, config: Any) -> MethodInfo:
        """This info with ``terms`` as ``config`` makes them (a ``terms`` function called)."""
        if not callable(self.terms):
            return self
        return dataclasses.replace(self, terms=tuple(self.terms(config)))

    def wants_teacher(self, config: Any) -> bool:
        """Whether this method, with ``config``, needs an external teacher."""
        return bool(self.needs_teacher(config) if callable(self.needs_teacher) else self.needs_teacher)


def registering(*infos: MethodInfo | DatasetInfo | LoggerInfo) -> Callable[[Callable[[Any], None]], None]:
    """A plugin module's registration in one statement::

        kdzoo_register_methods = kdzoo.registering(MethodInfo(name="mine", factory=Mine, ...))
        kdzoo_register_loggers = kdzoo.registering(LoggerInfo(name="mytracker", factory=MyTracker))

    the discovery hook implementation (bound to the module attribute of the hook's name) that
    registers ``infos``: methods, datasets or trackers."""

    @hookimpl
    def kdzoo_register(register: Callable[[Any], None]) -> None:
        for info in infos:
            register(info)

    return kdzoo_register


# ----------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class DatasetSplits:
    """What a dataset plugin's loader returns: the training and validation sets as map-style datasets
    of ``(image, label)`` (a PIL image, decoded on access; an int class index), and the number of
    classes. kdzoo makes the images the models' inputs (timm's transforms, each model's own input) and
    reads ``targets`` (every sample's label, in order) where the set has it, for methods that need the
    classes of the whole set (CRD)."""

    train: Any  #: a ``torch.utils.data.Dataset`` of (PIL image, int)
    val: Any
    num_classes: int
    in_chans: int = 3


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset a plugin adds (``kdzoo_register_datasets``), selected by ``data.name``. ``load`` gets
    ``data.root`` (``None``: the dataset's usual place) and returns its :class:`DatasetSplits`; a missing
    or broken file is a :class:`KdzooError` of one line naming it and what to do."""

    name: str
    load: Callable[[str | None], DatasetSplits]
    summary: str = ""
    #: filled in by kdzoo when it loads the plugin
    plugin: str = ""
    distribution: str = ""
    version: str = ""


@dataclass(frozen=True)
class LoggerInfo:
    """An experiment tracker a plugin adds (``kdzoo_register_loggers``), selected by ``train.loggers``.
    ``factory(run_dir, first_epoch)`` makes it for one run (on the main process; ``first_epoch``: the
    epochs a resumed run already has): an object whose lifecycle hooks (``kdzoo_on_run_start``,
    ``kdzoo_on_epoch_end``, ``kdzoo_on_run_end``, marked with :data:`kdzoo.hookimpl`) receive the run's
    records, and whose ``close()``, where it has one, is called when the run ends or stops.
    ``requires``: the modules it imports, checked when the run is built; one missing is one line naming
    ``extra`` (``pip install 'kdzoo[EXTRA]'``)."""

    name: str
    factory: Callable[[Path, int], object]
    summary: str = ""
    requires: tuple[str, ...] = ()
    extra: str = ""
    #: filled in by kdzoo when it loads the plugin
    plugin: str = ""
    distribution: str = ""
    version: str = ""


# ----------------------------------------------------------------------------- models and taps
@dataclass(frozen=True)
class StageInfo:
    """One tappable feature map: index into ``feature_info``, channels, stride, module path."""

    index: int
    channels: int
    reduction: int
    module: str


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a model, read from timm without running it."""

    name: str
    stages: tuple[StageInfo, ...]
    num_classes: int
    embedding_dim: int
    img_size: int
    #: a second classifier on a distillation token (timm's ``*_distilled_*`` models, DeiT)
    distillation_head: bool = False
    #: channels of ``forward_features``' output (timm's ``num_features``); it differs from
    #: ``embedding_dim`` where a head layer follows the pooling (MobileNetV3's conv_head); 0 if unknown
    feature_map_channels: int = 0

    def relative_depth(self, index: int) -> float:
        """0.0 for the first tappable stage, 1.0 for the last."""
        return index / max(len(self.stages) - 1, 1)

    def spatial_size(self, index: int) -> int:
        """Side of the feature map at ``index`` for a square input of ``img_size``."""
        return max(1, math.ceil(self.img_size / self.stages[index].reduction))

    def stage(self, index: int) -> StageInfo:
        return self.stages[self.resolve(index)]

    def resolve(self, index: int) -> int:
        """A stage index, negative ones counted from the end; out of range is an error."""
        if not -len(self.stages) <= index < len(self.stages):
            raise KdzooError(
                f"{self.name} has {len(self.stages)} tappable stages (0..{len(self.stages) - 1}); "
                f"stage {index} does not exist"
            )
        return index % len(self.stages)


@dataclass(frozen=True)
class Summary:
    """A reduced form of one teacher feature map, when that is all a method needs of it.

    ``fn`` runs on the map right after the teacher's forward pass (no gradient); only its result
    is kept for the loss and stored in a teacher-output cache, and the map itself is dropped unless
    some method taps it whole. Attention transfer, for instance, keeps ``mean_c(f^2)``: C times
    less memory held through the student's step, C times less cache. ``name`` identifies ``fn``
    with its parameters (it names the cached array): the same name must mean the same function.
    ``stage`` is a resolved index into the teacher's ``ModelInfo.stages``.
    """

    name: str
    stage: int
    fn: Callable[[Tensor], Tensor] = field(compare=False, hash=False, repr=False)

    @property
    def key(self) -> str:
        return summary_key(self.name, self.stage)


def summary_key(name: str, stage: int) -> str:
    """How a :class:`Summary` result is named in ``Outputs.summaries`` and in the teacher cache."""
    return f"{name}@{stage}"


@dataclass(frozen=True)
class Taps:
    """What a method needs from one step's forward passes (indices into ``ModelInfo.stages``).

    ``teacher_preact`` / ``student_preact``: stages whose map is wanted *before* the activation
    that ends the stage (pre-ReLU features, for methods such as OFD and AB); a stage that does not
    end in an activation (a transformer block, a linear bottleneck) gives its output itself."""

    teacher: tuple[int, ...] = ()
    student: tuple[int, ...] = ()
    teacher_embedding: bool = False
    student_embedding: bool = False
    teacher_summaries: tuple[Summary, ...] = ()
    teacher_preact: tuple[int, ...] = ()
    student_preact: tuple[int, ...] = ()
    #: the logits of the student's distillation head as well (``Outputs.distillation_logits``), for
    #: students with a distillation token (``ModelInfo.distillation_head``); the student then trains
    #: its two heads apart, and is evaluated on their average, as DeiT does
    student_distillation_head: bool = False

    @classmethod
    def of_pairs(cls, pairs: Iterable[tuple[int, int]], preact: bool = False) -> Taps:
        """The maps (or, with ``preact``, the pre-activation maps) of (student, teacher) stage pairs."""
        pairs = list(pairs)
        student, teacher = tuple(sorted({s for s, _ in pairs})), tuple(sorted({t for _, t in pairs}))
        return cls(student_preact=student, teacher_preact=teacher) if preact else cls(student=student, teacher=teacher)

    def __or__(self, other: Taps) -> Taps:
        summaries = {s.key: s for s in (*other.teacher_summaries, *self.teacher_summaries)}
        return Taps(
            tuple(sorted(set(self.teacher) | set(other.teacher))),
            tuple(sorted(set(self.student) | set(other.student))),
            self.teacher_embedding or other.teacher_embedding,
            self.student_embedding or other.student_embedding,
            tuple(summaries[k] for k in sorted(summaries)),
            tuple(sorted(set(self.teacher_preact) | set(other.teacher_preact))),
            tuple(sorted(set(self.student_preact) | set(other.student_preact))),
            self.student_distillation_head or other.student_distillation_head,
        )


def union(taps: Iterable[Taps | None]) -> Taps:
    out = Taps()
    for tap in taps:
        if tap is not None:
            out = out | tap
    return out


@dataclass
class Outputs:
    """One model's outputs for one batch: logits, tapped NCHW feature maps, optional embedding,
    and (teacher only) the :class:`Summary` results, keyed by ``Summary.key``."""

    logits: Tensor
    features: dict[int, Tensor] = field(default_factory=dict)
    embedding: Tensor | None = None
    summaries: dict[str, Tensor] = field(default_factory=dict)
    preact: dict[int, Tensor] = field(default_factory=dict)  #: pre-activation maps (``Taps.*_preact``)
    distillation_logits: Tensor | None = None  #: the distillation head's (``Taps.student_distillation_head``)

    def feature(self, index: int) -> Tensor:
        try:
            return self.features[index]
        except KeyError:
            raise KdzooError(f"feature {index} was not tapped; declare it in kdzoo_feature_taps") from None

    def pre_activation(self, index: int) -> Tensor:
        """The map of stage ``index`` before the activation that ends the stage."""
        try:
            return self.preact[index]
        except KeyError:
            raise KdzooError(
                f"the pre-activation map of stage {index} was not tapped; declare it in kdzoo_feature_taps "
                f"(Taps.student_preact / teacher_preact)"
            ) from None

    def summary(self, name: str, stage: int) -> Tensor:
        try:
            return self.summaries[summary_key(name, stage)]
        except KeyError:
            raise KdzooError(
                f"summary '{name}' of stage {stage} was not computed; declare it in kdzoo_feature_taps"
            ) from None

    def rows(self, index: slice) -> Outputs:
        """These outputs for a slice of the batch (one view of a stack of views)."""
        return Outputs(
            self.logits[index],
            {i: f[index] for i, f in self.features.items()},
            None if self.embedding is None else self.embedding[index],
            {k: v[index] for k, v in self.summaries.items()},
            {i: f[index] for i, f in self.preact.items()},
            None if self.distillation_logits is None else self.distillation_logits[index],
        )

    def detached_copy(self) -> Outputs:
        """Normal (non-inference) tensors, so losses can save them for backward."""
        return Outputs(
            self.logits.clone(),
            {i: f.clone() for i, f in self.features.items()},
            None if self.embedding is None else self.embedding.clone(),
            {k: v.clone() for k, v in self.summaries.items()},
            {i: f.clone() for i, f in self.preact.items()},
            None if self.distillation_logits is None else self.distillation_logits.clone(),
        )


def pair_stage(teacher: ModelInfo, student: ModelInfo, student_index: int) -> int:
    """The teacher stage matching ``student_index``: closest relative depth, then closest stride."""
    student_index = student.resolve(student_index)
    s_depth = student.relative_depth(student_index)
    s_red = student.stages[student_index].reduction

    def distance(stage: StageInfo) -> tuple[float, float, int]:
        depth_gap = abs(teacher.relative_depth(stage.index) - s_depth)
        stride_gap = abs(math.log2(stage.reduction) - math.log2(s_red))
        return (round(depth_gap, 6), stride_gap, stage.index)

    if not teacher.stages:
        raise KdzooError(f"teacher {teacher.name} exposes no feature_info stages to pair with")
    return min(teacher.stages, key=distance).index


def pair_stages(
    teacher: ModelInfo, student: ModelInfo, student_indices: Iterable[int], teacher_indices: Iterable[int] | None = None
) -> list[tuple[int, int]]:
    """(student, teacher) stage pairs: given explicitly, or each student stage paired by :func:`pair_stage`."""
    s_idx = [student.resolve(i) for i in student_indices]
    if teacher_indices is None:
        return [(s, pair_stage(teacher, student, s)) for s in s_idx]
    t_idx = [teacher.resolve(i) for i in teacher_indices]
    if len(t_idx) != len(s_idx):
        raise KdzooError(f"{len(s_idx)} student stages but {len(t_idx)} teacher stages given; pair them one to one")
    return list(zip(s_idx, t_idx, strict=True))


def inner_stages(info: ModelInfo) -> list[int]:
    """Every stage but the first (the stem) and the last: the usual choice for multi-stage losses.
    A model that exposes no stages (no timm ``feature_info``) is a one-line error."""
    if not info.stages:
        raise KdzooError(
            f"{info.name} exposes no feature_info stages: a method on intermediate features cannot pair "
            f"its stages (use a timm model with feature_info, or a logit method such as kd)"
        )
    return list(range(1, len(info.stages) - 1)) or list(range(len(info.stages)))


def pair_inner_stages(
    teacher: ModelInfo,
    student: ModelInfo,
    student_stages: Iterable[int] | None = None,
    teacher_stages: Iterable[int] | None = None,
) -> list[tuple[int, int]]:
    """(student, teacher) pairs for a multi-stage method: the given student stages (default: every
    stage but the stem and the last), each with the given teacher stage or the one :func:`pair_stage`
    picks. The common default of AT, NST, VID and AB."""
    wanted = student_stages if student_stages is not None else inner_stages(student)
    return pair_stages(teacher, student, wanted, teacher_stages)


@dataclass(frozen=True)
class View:
    """An extra view of every training image that a method wants in its step (``kdzoo_views``):
    rotated copies (SSKD), a strongly augmented copy (MLKD).

    ``make(x)`` turns a batch of model inputs (B, C, H, W; normalised, already augmented as the data
    pipeline does) into the view, same shape, drawing any randomness from torch's global RNG (saved
    in checkpoints: a resumed run draws the same). The core stacks the views after the input batch
    and runs each model once on the stack. ``name`` identifies ``make``: methods asking for a view of
    the same name share it."""

    name: str
    make: Callable[[Tensor], Tensor] = field(compare=False, hash=False, repr=False)


#: the name of the batch as the data pipeline made it, first in every stack of views
INPUT_VIEW = "input"


@dataclass(frozen=True)
class TrainingSet:
    """What a method may know of the training data when it builds its modules
    (``kdzoo_build_modules(train_set=...)``): per-sample state, such as CRD's memory bank, is sized
    from it, and ``kdzoo_compute_losses(indices=...)`` then gives each batch's positions in it.

    ``labels``: each sample's class in dataset order (what ``indices`` index), when the data says
    so; ``batch_size``: this process's share of a training batch; ``device``: where training runs."""

    num_samples: int
    labels: Tensor | None = None
    batch_size: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


# ----------------------------------------------------------------------------- stages
TrainableFn = Callable[[nn.Module, nn.ModuleDict], Iterable[nn.Parameter]]


@dataclass(frozen=True)
class Stage:
    """One named phase of training.

    ``losses``: names of the loss terms switched on (``None``: every term).
    ``trainable``: ``fn(student, method_modules) -> parameters`` that train (``None``: all of them).
    ``optim``: overrides of the run's ``optim`` section for this stage, e.g. ``{"name": "adam"}``.
    ``lr_scale``: the stage's learning rate as a fraction of the run's (after ``optim``), for a
    method whose published recipe trains at a fraction of the rate plain training of the same pair
    uses: it follows whatever ``optim.lr`` the user sets, which an absolute ``optim`` override cannot.
    """

    name: str
    epochs: int
    losses: frozenset[str] | None = None
    trainable: TrainableFn | None = None
    optim: dict[str, Any] = field(default_factory=dict)
    lr_scale: float = 1.0

    def term_on(self, term: str) -> bool:
        return self.losses is None or term in self.losses


def parameters_up_to(model: nn.Module, module_path: str) -> list[nn.Parameter]:
    """The parameters registered before and inside ``module_path``.

    timm registers modules in forward order (its own ``FeatureListNet`` truncates a model the same
    way), so these are the parameters that feed the feature map at ``module_path``.
    """
    chosen: list[nn.Parameter] = []
    found = False
    for name, module in model.named_modules():
        inside = name == module_path or name.startswith(module_path + ".")
        if found and not inside:
            break
        found = found or inside
        chosen.extend(module.parameters(recurse=False))
    if not found:
        raise ValueError(f"{type(model).__name__} has no module '{module_path}'")
    return chosen


WHOLE_RUN = Stage("train", 1)  # the one stage of a run without a schedule: every term on


# ----------------------------------------------------------------------------- one step
@dataclass(frozen=True)
class When:
    """Where a step falls in training: the ``stage``, the 0-based ``epoch`` within it and the
    ``progress`` over the stage (0..1), which a method's weights may ramp with."""

    stage: Stage = WHOLE_RUN
    epoch: int = 0
    progress: float = 0.0


@dataclass
class Batch:
    """One step's input: the images, their class labels, each sample's position in the training set
    (``indices``, for per-sample state; ``None`` when the data gives none) and, when they come from a
    teacher-output cache, the teacher's outputs for these samples (``teacher``)."""

    inputs: Tensor
    labels: Tensor
    indices: Tensor | None = None
    teacher: Outputs | None = None
    #: which of each sample's fixed augmented views the inputs are (``data.views``; 0 without), so a
    #: teacher-output cache gives the teacher's outputs of that view
    view: int = 0
    #: the targets as class distributions (N, classes) when the batch was mixed (``data.mixup``/``cutmix``);
    #: ``labels`` then hold each sample's dominant class
    soft_targets: Tensor | None = None


@dataclass
class StepResult:
    """What one step computed: the weighted ``loss`` (``None`` for a step skipped as non-finite), every
    unweighted term, the weights used, and the student's ``logits`` for the batch's own rows (not its
    extra views), detached."""

    loss: Tensor | None
    terms: dict[str, Tensor]
    weights: dict[str, float]
    logits: Tensor | None = None


# ----------------------------------------------------------------------------- the run
class Run(Protocol):
    """What the lifecycle hooks' ``run`` argument offers (the engine's trainer implements it).

    Read-only views of the run, and the few operations a method may perform on it."""

    config: Any  #: the run's ``RunConfig``: ``config.train.epochs``, ``config.method_configs[name]``
    device: torch.device
    run_dir: Path
    stages: list[Stage]  #: the schedule
    history: list[dict[str, Any]]  #: the ``metrics.jsonl`` records written so far
    data: Any  #: the data bundle: ``data.train``, ``data.val``, ``data.num_classes``
    teacher_metrics: dict[str, float] | None  #: the teacher's validation accuracy, once known

    @property
    def student(self) -> nn.Module: ...

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher in eval mode, or ``None`` (no teacher, or its outputs come from a cache)."""

    @property
    def modules(self) -> nn.ModuleDict:
        """Every method's modules: ``run.modules["fitnets"]["regressor"]``."""

    @property
    def student_info(self) -> ModelInfo: ...

    @property
    def teacher_info(self) -> ModelInfo | None: ...

    def student_copy(self) -> nn.Module:
        """A detached deep copy of the current student."""

    def new_student(self, seed: int) -> nn.Module:
        """A freshly initialised model of the student's architecture, drawn from ``seed`` (the
        run's RNG streams are left as they were)."""

    def set_teacher(self, model: nn.Module, name: str) -> None:
        """Make ``model`` the frozen teacher from the next step on, shown as ``name``. A model of the
        student's architecture (a trained generation) is evaluated, saved with every checkpoint and
        restored when the run resumes."""


# ----------------------------------------------------------------------------- shared loss helpers
def linear_warmup(epoch: int, warmup_epochs: int) -> float:
    """A loss weight's linear warm-up at 0-based ``epoch``: ``min((epoch + 1) / warmup_epochs, 1)``
    (``warmup_epochs <= 0``: always 1). mdistiller's ``min(epoch / warmup, 1)`` counts epochs from 1,
    so its first epoch already gets ``1 / warmup``: the same schedule. Use it in
    ``kdzoo_loss_weights``."""
    if warmup_epochs <= 0:
        return 1.0
    return min((epoch + 1) / warmup_epochs, 1.0)


def full_precision(t: Tensor) -> Tensor:
    """``t`` in at least float32: a half-precision tensor (bf16/fp16 from autocast) is upcast to
    float32; a float32 or float64 one is returned as it is. Use it where a loss needs full precision
    (softmaxes, logs, norms): ``t.float()`` would also round a ``train.precision=fp64`` run down."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def soft_target_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton's soft-target term: ``T^2 * KL(softmax(t/T) || softmax(s/T))``.

    Reduction is ``batchmean`` (sum over classes, mean over the batch), the definition of KL;
    PyTorch's default ``'mean'`` would also divide by the number of classes. The ``T^2`` factor
    keeps the soft-target gradients on the scale of the hard-label ones (Hinton et al., 2015).
    """
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)
