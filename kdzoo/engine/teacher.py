"""The run's teacher, with one owner: where its outputs come from, what it is, and how well it does.

A step's teacher outputs come from one of three places, decided here and nowhere else: the live
model, run once under ``inference_mode`` with exactly the taps the methods asked for; a teacher-output
cache filled before training (the model is then not even built); or a model a method set during the
run (a trained generation, Born-Again), which is saved with every checkpoint. The choice is made when
the teacher is set, not at every step: :attr:`Teacher.supply` is then the one call that answers a
step (the live model's frozen forward, or the cache's lookup), and the objective makes it directly. The teacher's
accuracy, its :class:`~kdzoo.api.ModelInfo` and where it came from (for the run's summary) live here
too. Its weights files (a checkpoint, the trained-teacher cache) are :mod:`.teacher_files`' job.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from kdzoo.api import KdzooError, ModelInfo, Outputs, Taps
from kdzoo.engine.extract import FeatureExtractor
from kdzoo.engine.teacher_cache import TeacherOutputCache
from kdzoo.reporting.records import TeacherSource

#: a step's teacher outputs for inputs ``x``, the samples ``indices`` in their fixed ``view`` (a cache's keys)
Supply = Callable[[Tensor, "Tensor | None", int], Outputs]


class Teacher:
    """The teacher of one objective (``None`` model, info and cache: a run without a teacher)."""

    def __init__(self, taps: Taps):
        self.taps = taps
        self.info: ModelInfo | None = None
        self.metrics: dict[str, float] | None = None  #: validation accuracy, once measured
        self.cache: TeacherOutputCache | None = None
        self.method_name: str | None = None  #: the name a method gave the teacher it set
        self._model: list[nn.Module] = []  # a list keeps the frozen model out of parameters()/state_dict()
        self.tap: FeatureExtractor | None = None
        #: what answers for a step's teacher outputs, chosen when the teacher is set: the live model's
        #: frozen forward (:meth:`FeatureExtractor.frozen`), the cache's lookup, or ``None`` (no teacher)
        self.supply: Supply | None = None
        #: the configured teacher's input from the batch, and a student-architecture teacher's (a method's
        #: generation), when the batches are drawn for another input (:mod:`kdzoo.data.inputs`)
        self.prepare: Callable[[Tensor], Tensor] | None = None
        self.student_prepare: Callable[[Tensor], Tensor] | None = None

    # ------------------------------------------------------------------ where outputs come from
    @property
    def model(self) -> nn.Module | None:
        """The frozen model in eval mode, or ``None`` (no teacher, or its outputs come from a cache)."""
        return self._model[0] if self._model else None

    @property
    def source(self) -> TeacherSource | None:
        if self.method_name is not None:
            return "method"
        if self.cache is not None:
            return "cached outputs"
        return "model" if self.model is not None else None

    def use_model(self, model: nn.Module, info: ModelInfo, device) -> None:
        """Run ``model`` (frozen) for the outputs from the next step on."""
        model.requires_grad_(False).eval().to(device)
        for p in model.parameters():
            p.grad = None  # a teacher trained just before would otherwise carry its last gradients
        self.close()
        self._model, self.info = [model], info
        taps = self.taps
        self.tap = FeatureExtractor(
            model, info, taps.teacher, taps.teacher_embedding, taps.teacher_summaries, taps.teacher_preact
        )
        self.tap.prepare = self.student_prepare if self.method_name is not None else self.prepare
        if self.cache is None:  # while a cache is filled for these taps, it answers
            self.supply = self.tap.frozen

    def use_cache(self, cache: TeacherOutputCache, info: ModelInfo) -> None:
        """Read the outputs from ``cache`` (filled for these taps); the model is let go."""
        self.close()
        self._model, self.tap, self.cache, self.info = [], None, cache, info
        self.supply = functools.partial(_from_cache, cache)

    def set_by_method(self, model: nn.Module, info: ModelInfo, name: str, device) -> None:
        """A model a method made the teacher (a trained generation): live, saved with the run."""
        self.cache, self.method_name = None, name  # cached outputs belong to the previous teacher
        self.use_model(model, info, device)

    def outputs(self, x: Tensor, indices: Tensor | None, view: int) -> Outputs | None:
        """The teacher's outputs for inputs ``x`` (samples ``indices`` in their fixed ``view``, for a
        cache); ``None`` without a teacher."""
        return None if self.supply is None else self.supply(x, indices, view)

    def close(self) -> None:
        """Remove the forward hooks the extractor put on a model without native taps."""
        if self.tap is not None:
            self.tap.close()

    def compile(self, mode: str, backend: str) -> None:
        if self.tap is not None:
            self.tap.compile(mode, backend)

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any] | None:
        """What a checkpoint keeps of a teacher a method set (``None`` for any other)."""
        model = self.model
        if self.method_name is None or model is None:
            return None
        return {"name": self.method_name, "state": model.state_dict()}


def _from_cache(cache: TeacherOutputCache, x: Tensor, indices: Tensor | None, view: int) -> Outputs:
    if indices is None:
        raise KdzooError("teacher.cache: the batch carries no sample indices to look its teacher outputs up by")
    return cache.lookup(indices, view, x.device)
