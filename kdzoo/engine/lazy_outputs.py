"""A model's outputs computed when a loss term first reads them.

The student's forward is most of a step's cost beside the teacher's. A stage that trains a
teacher-side module alone (SSKD's rotation head, FT's paraphraser) reads none of the student's
outputs, so its steps skip that forward without any method having to say so; every other step
runs it exactly as before, once, when the first term asks.
"""

from __future__ import annotations

from collections.abc import Callable

from kdzoo.api import Outputs


class LazyOutputs(Outputs):
    """:class:`~kdzoo.api.Outputs` whose fields come from ``compute()``, run at most once."""

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
