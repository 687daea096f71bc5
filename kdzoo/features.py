"""What a method can tap in a timm model, and the single forward pass that produces it.

Shapes come from timm's own description of a model (``feature_info``: channels, reduction, module
path per stage), so adapters are sized without a dummy forward. One forward per model per step
yields logits, every requested intermediate feature map and, on request, the pooled pre-logits
embedding: ``forward_intermediates`` + ``forward_head`` where timm has them, forward hooks on the
``feature_info`` module paths otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from kdzoo.errors import KdzooError


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


def describe(model: nn.Module, name: str, img_size: int) -> ModelInfo:
    """Read a :class:`ModelInfo` from a timm model's ``feature_info`` and head attributes."""
    raw = getattr(model, "feature_info", None) or []
    stages = tuple(
        StageInfo(i, int(f["num_chs"]), int(f["reduction"]), str(f.get("module", ""))) for i, f in enumerate(raw)
    )
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    embedding_dim = int(getattr(model, "head_hidden_size", 0) or getattr(model, "num_features", 0) or 0)
    return ModelInfo(name, stages, num_classes, embedding_dim, img_size)


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
    """What a method needs from one step's forward passes (indices into ``ModelInfo.stages``)."""

    teacher: tuple[int, ...] = ()
    student: tuple[int, ...] = ()
    teacher_embedding: bool = False
    student_embedding: bool = False
    teacher_summaries: tuple[Summary, ...] = ()

    def __or__(self, other: Taps) -> Taps:
        summaries = {s.key: s for s in (*other.teacher_summaries, *self.teacher_summaries)}
        return Taps(
            tuple(sorted(set(self.teacher) | set(other.teacher))),
            tuple(sorted(set(self.student) | set(other.student))),
            self.teacher_embedding or other.teacher_embedding,
            self.student_embedding or other.student_embedding,
            tuple(summaries[k] for k in sorted(summaries)),
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

    def feature(self, index: int) -> Tensor:
        try:
            return self.features[index]
        except KeyError:
            raise KdzooError(f"feature {index} was not tapped; declare it in kdzoo_feature_taps") from None

    def summary(self, name: str, stage: int) -> Tensor:
        try:
            return self.summaries[summary_key(name, stage)]
        except KeyError:
            raise KdzooError(
                f"summary '{name}' of stage {stage} was not computed; declare it in kdzoo_feature_taps"
            ) from None

    def detached_copy(self) -> Outputs:
        """Normal (non-inference) tensors, so losses can save them for backward."""
        return Outputs(
            self.logits.clone(),
            {i: f.clone() for i, f in self.features.items()},
            None if self.embedding is None else self.embedding.clone(),
            {k: v.clone() for k, v in self.summaries.items()},
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
    """Every stage but the first (the stem) and the last: the usual choice for multi-stage losses."""
    return list(range(1, len(info.stages) - 1)) or list(range(len(info.stages)))


class FeatureExtractor:
    """Runs a model once and returns :class:`Outputs` with exactly the requested taps."""

    def __init__(
        self,
        model: nn.Module,
        info: ModelInfo,
        indices: Iterable[int],
        embedding: bool,
        summaries: Iterable[Summary] = (),
    ):
        self.model = model
        self.info = info
        # (key, function, resolved stage) of each summary, resolved once rather than every step
        self.summaries = [(s.key, s.fn, info.resolve(s.stage)) for s in summaries]
        self.kept = {info.resolve(i) for i in indices}  # the maps returned whole
        self.indices = sorted(self.kept | {stage for _, _, stage in self.summaries})
        self.embedding = embedding
        self.native = hasattr(model, "forward_intermediates") and hasattr(model, "forward_head")
        self._hooked: dict[int, Tensor] = {}
        self._handles = [] if self.native else self._install_hooks()

    def _install_hooks(self) -> list:
        handles = []
        for i in self.indices:
            path = self.info.stages[i].module
            try:
                module = self.model.get_submodule(path)
            except AttributeError:
                raise KdzooError(f"{self.info.name}: feature_info module '{path}' not found") from None
            handles.append(module.register_forward_hook(self._hook(i)))
        return handles

    def _hook(self, index: int):
        prefix = int(getattr(self.model, "num_prefix_tokens", 0) or 0)

        def keep(_module, _inputs, output):
            self._hooked[index] = tokens_to_nchw(output, prefix) if output.ndim == 3 else output

        return keep

    def compile(self) -> None:
        """Compile the forward pass (graph breaks fall back to eager; hooks make it eager anyway)."""
        if self.native:
            self._forward = torch.compile(self._forward)

    def __call__(self, x: Tensor) -> Outputs:
        out = self._forward(x)
        if self.summaries:
            out.summaries = {key: fn(out.features[stage]) for key, fn, stage in self.summaries}
            out.features = {i: f for i, f in out.features.items() if i in self.kept}
        return out

    def _forward(self, x: Tensor) -> Outputs:
        if self.native:
            if self.indices:
                final, maps = self.model.forward_intermediates(x, indices=self.indices)
                features = dict(zip(self.indices, maps, strict=True))
            else:
                final, features = self.model.forward_features(x), {}
        else:
            has_head = hasattr(self.model, "forward_features") and hasattr(self.model, "forward_head")
            try:
                final = self.model.forward_features(x) if has_head else self.model(x)
            finally:
                features, self._hooked = self._hooked, {}
            if not has_head:
                if self.embedding:
                    raise KdzooError(f"{self.info.name} has no forward_head: cannot tap its embedding")
                return Outputs(final, features, None)
        return self._head(final, features)

    def _head(self, final: Tensor, features: dict[int, Tensor]) -> Outputs:
        if not self.embedding:
            return Outputs(self.model.forward_head(final), features, None)
        pooled = self.model.forward_head(final, pre_logits=True)
        return Outputs(self.model.get_classifier()(pooled), features, pooled)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def tokens_to_nchw(tokens: Tensor, num_prefix_tokens: int) -> Tensor:
    """(B, prefix + H*W, C) transformer tokens -> (B, C, H, W), dropping class/register tokens."""
    patches = tokens[:, num_prefix_tokens:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise KdzooError(f"cannot reshape {patches.shape[1]} patch tokens into a square map")
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


def named_forward(who: str, run, x: Tensor):
    """Run a model; a failure names the model and the input shape instead of a bare traceback."""
    try:
        return run()
    except KdzooError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise KdzooError(
            f"the {who} failed in its forward pass on an input of shape {tuple(x.shape)}: {type(exc).__name__}: {first}"
        ) from exc


def run_teacher(extractor: FeatureExtractor | None, x: Tensor) -> Outputs | None:
    """The teacher's outputs without autograd, as normal tensors usable in a loss."""
    if extractor is None:
        return None
    with torch.inference_mode():
        out = extractor(x)
    return out.detached_copy()
