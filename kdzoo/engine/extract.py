"""The single forward pass per model that produces what the active methods tapped.

:func:`describe` reads a :class:`~kdzoo.api.ModelInfo` from timm's own description of a model
(``feature_info``: channels, reduction, module path per stage), so adapters are sized without a
dummy forward. One forward per model per step
yields logits, every requested intermediate feature map and, on request, the pooled pre-logits
embedding: ``forward_intermediates`` + ``forward_head`` where timm has them, forward hooks on the
``feature_info`` module paths otherwise.

When that forward runs is decided here too: the teacher's frozen, under ``inference_mode``
(:meth:`FeatureExtractor.frozen`); the student's when a loss term first reads its outputs
(:class:`LazyOutputs`), so a stage that trains a teacher-side module alone (SSKD's rotation head,
FT's paraphraser) skips it without any method having to say so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from kdzoo.api import KdzooError, ModelInfo, Outputs, StageInfo, Summary
from kdzoo.engine.preact import PreActivationTaps
from kdzoo.errors import first_line


def model_name(model: nn.Module) -> str:
    """The timm architecture a model was created as (its class name for other models)."""
    return (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__


def device_of(model: nn.Module, role: str) -> torch.device:
    """Where ``model``'s parameters live; a model without parameters is a one-line error."""
    try:
        return next(iter(model.parameters())).device
    except StopIteration:
        raise KdzooError(
            f"the {role} ({model_name(model)}) has no parameters: distillation needs a model with weights"
        ) from None


def describe(model: nn.Module, name: str, img_size: int) -> ModelInfo:
    """Read a :class:`ModelInfo` from a timm model's ``feature_info`` and head attributes."""
    raw = getattr(model, "feature_info", None) or []
    stages = tuple(
        StageInfo(i, int(f["num_chs"]), int(f["reduction"]), str(f.get("module", ""))) for i, f in enumerate(raw)
    )
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    embedding_dim = int(getattr(model, "head_hidden_size", 0) or getattr(model, "num_features", 0) or 0)
    distillation_head = callable(getattr(model, "set_distilled_training", None))  # timm's distilled ViTs
    feature_map_channels = int(getattr(model, "num_features", 0) or 0)
    return ModelInfo(name, stages, num_classes, embedding_dim, img_size, distillation_head, feature_map_channels)


class FeatureExtractor:
    """Runs a model once and returns :class:`Outputs` with exactly the requested taps."""

    def __init__(
        self,
        model: nn.Module,
        info: ModelInfo,
        indices: Iterable[int],
        embedding: bool,
        summaries: Iterable[Summary] = (),
        preact: Iterable[int] = (),
        distillation_head: bool = False,
    ):
        # a timm model: forward_intermediates, forward_head and the rest are not nn.Module's own methods
        self.model: Any = model
        if distillation_head:
            # in training, timm's distilled models then return (class head, distillation head) logits;
            # in eval mode their average, as DeiT evaluates
            model.set_distilled_training(True)  # type: ignore[operator]  # timm's distilled ViTs have it
        self.info = info
        # (key, function, resolved stage) of each summary, resolved once rather than every step
        self.summaries = [(s.key, s.fn, info.resolve(s.stage)) for s in summaries]
        self.kept = {info.resolve(i) for i in indices}  # the maps returned whole
        self.indices = sorted(self.kept | {stage for _, _, stage in self.summaries})
        self.embedding = embedding
        self.native = hasattr(model, "forward_intermediates") and hasattr(model, "forward_head")
        self._hooked: dict[int, Tensor] = {}
        self._handles = [] if self.native else self._install_hooks()
        self._run: Callable[[Tensor], Outputs] = self._forward  # compiled by compile()
        prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
        to_nchw = lambda t: tokens_to_nchw(t, prefix) if t.ndim == 3 else t  # noqa: E731
        self.preact = PreActivationTaps(model, info, preact, to_nchw) if preact else None
        #: makes this model's own input from the batch (re-normalised, resized: :mod:`kdzoo.data.inputs`)
        #: when the batches are drawn for another model's; ``None``: the batch is its input
        self.prepare: Callable[[Tensor], Tensor] | None = None

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

    def compile(self, mode: str = "default", backend: str = "inductor") -> None:
        """Compile the forward pass (graph breaks fall back to eager; hooks make it eager anyway)."""
        if self.native:
            self._run = torch.compile(self._forward, mode=mode, backend=backend)

    def frozen(self, x: Tensor, indices: Tensor | None = None, view: int = 0) -> Outputs:
        """This model's outputs as a teacher's: without autograd, as normal tensors a loss can save; a
        failure names the teacher and the input's shape. (``indices`` and ``view`` locate a cached
        teacher's outputs, which :class:`~kdzoo.engine.teacher.Teacher` reads through the same call;
        a live model needs ``x`` alone.)"""
        return named_forward(f"teacher ({self.info.name})", lambda: run_teacher(self, x), x)

    def __call__(self, x: Tensor) -> Outputs:
        if self.prepare is not None:
            x = self.prepare(x)
        out = self._run(x)
        if self.preact is not None:
            out.preact = self.preact.take()
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
        pooled = self.model.forward_head(final, pre_logits=True) if self.embedding else None
        classifier = self.model.get_classifier() if self.embedding else None
        if isinstance(classifier, nn.Module):  # one head: its logits from the pooled embedding, one pass
            return Outputs(classifier(pooled), features, pooled)
        # no embedding wanted, or two heads (a distillation token): the model's own head
        logits = self.model.forward_head(final)
        if isinstance(logits, tuple):  # (class head, distillation head) while distilled-training
            return Outputs(logits[0], features, pooled, distillation_logits=logits[1])
        return Outputs(logits, features, pooled)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.preact is not None:
            self.preact.close()


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
        if out_of_memory(exc):
            raise KdzooError(
                f"the {who} ran out of memory in its forward pass on an input of shape {tuple(x.shape)}; "
                f"lower data.batch_size or data.img_size"
            ) from None
        first = first_line(exc)[:300]
        raise KdzooError(
            f"the {who} failed in its forward pass on an input of shape {tuple(x.shape)}: {type(exc).__name__}: {first}"
        ) from exc


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: a GPU's (``torch.OutOfMemoryError``) or the host's
    (the CPU allocator's RuntimeError, or Python's MemoryError)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in str(exc) or "out of memory" in str(exc).lower()
    )


def run_teacher(extractor: FeatureExtractor | None, x: Tensor) -> Outputs | None:
    """The teacher's outputs without autograd, as normal tensors usable in a loss."""
    if extractor is None:
        return None
    with torch.inference_mode():
        out = extractor(x)
    return out.detached_copy()


class LazyOutputs(Outputs):
    """:class:`~kdzoo.api.Outputs` whose fields come from ``compute()`` (a model's forward), run at
    most once, when a loss term first reads one."""

    def __init__(self, compute: Callable[[], Outputs]):  # no dataclass fields set: the properties serve them
        self._compute: Callable[[], Outputs] | None = compute
        self._outputs: Outputs | None = None

    def resolved(self) -> Outputs:
        if self._outputs is None:
            assert self._compute is not None  # set until the outputs are computed
            self._outputs, self._compute = self._compute(), None
        return self._outputs

    @property
    def computed(self) -> bool:
        return self._outputs is not None

    def rows(self, index: slice) -> Outputs:
        return LazyOutputs(lambda: self.resolved().rows(index))

    logits = property(lambda self: self.resolved().logits)
    features = property(lambda self: self.resolved().features)
    embedding = property(lambda self: self.resolved().embedding)
    summaries = property(lambda self: self.resolved().summaries)
    preact = property(lambda self: self.resolved().preact)
    distillation_logits = property(lambda self: self.resolved().distillation_logits)

    def __repr__(self) -> str:
        return repr(self._outputs) if self._outputs is not None else "LazyOutputs(not computed)"
