"""torchdistill's own training step, for ``kdzoo bench`` to time beside kdzoo's (optional extra).

:func:`torchdistill_step` builds a ``torchdistill.core.distillation.DistillationBox`` from the config
:mod:`kdzoo_benchmarks.torchdistill.configs` writes for a stack (how each kdzoo method maps onto
torchdistill's losses is documented there) and returns a closure doing one step through the box's
own per-step path: ``forward_process`` (teacher forward under ``no_grad``, student forward, the
hooks' I/O dicts, the auxiliary wrappers' secondary forward, the criterion) then
``post_forward_process`` (backward, optimizer step, zero_grad, scheduler step). Nothing is computed
by hand: the measured cost is torchdistill's.

The teacher is deep-copied (torchdistill hooks its modules; the caller's teacher stays hook-free
for the other variants); the student is trained in place, as the other variants' students are.
One behaviour that shows in memory readings: torchdistill calls ``optimizer.zero_grad()`` (set to
None) right after each step, kdzoo just before the next backward, so between steps torchdistill
holds no gradients and a "peak above what was allocated before the step" counts the student's
gradients for torchdistill but not for kdzoo.

torchdistill 1.1.5 imported and ran unchanged under torch 2.14 (and 2.11): no workaround needed.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from kdzoo_benchmarks.torchdistill.configs import (
    TORCHDISTILL_METHODS,
    WRAPPER_KEY,
    SecondaryStep,
    torchdistill_config,
    torchdistill_supports,
)

__all__ = [
    "TORCHDISTILL_METHODS",
    "TorchdistillStep",
    "torchdistill_available",
    "torchdistill_config",
    "torchdistill_step",
    "torchdistill_supports",
]


def torchdistill_available() -> bool:
    """Whether torchdistill imports (the ``torchdistill`` extra is installed and loads)."""
    try:
        import torchdistill.core.distillation  # noqa: F401
    except Exception:  # ImportError, or an incompatibility raised while importing
        return False
    return True


class TorchdistillStep:
    """One torchdistill training step per call. ``box`` is the ``DistillationBox``; ``last_loss``
    the detached total loss of the last call (no host sync)."""

    def __init__(self, box: Any, x: Tensor, y: Tensor):
        self.box, self.x, self.y = box, x, y
        self.last_loss: Tensor | None = None

    def __call__(self) -> None:
        box = self.box
        box.pre_forward_process()
        loss = box.forward_process(self.x, self.y, {})
        box.post_forward_process(loss)
        self.last_loss = loss.detach()


def _quiet() -> None:
    # torchdistill's loggers are children of the root logger named after its modules: quiet them all
    logging.getLogger("torchdistill").setLevel(logging.WARNING)


def _register_wrapper() -> None:
    from torchdistill.models.registry import AUXILIARY_MODEL_WRAPPER_DICT, register_auxiliary_model_wrapper
    from torchdistill.models.wrapper import AuxiliaryModelWrapper

    if WRAPPER_KEY in AUXILIARY_MODEL_WRAPPER_DICT:
        return

    class KdzooMethodModules(AuxiliaryModelWrapper):
        """A model plus copies of kdzoo's method modules (``method.<method>__<name>``), run on the
        hooked outputs by ``secondary_forward``; torchdistill's hooks on them feed its losses."""

        def __init__(
            self,
            modules: dict[str, nn.Module],
            steps: list[SecondaryStep],
            student_model: nn.Module | None = None,
            teacher_model: nn.Module | None = None,
            **kwargs,
        ):
            super().__init__()
            self.model = student_model if student_model is not None else teacher_model
            self.method = nn.ModuleDict(modules)
            self.steps = steps

        def forward(self, x: Tensor) -> Tensor:
            return self.model(x)

        def secondary_forward(self, io_dict: dict) -> None:
            self.method.train()  # as kdzoo's method modules in a training step (the teacher's too)
            for step in self.steps:
                step(io_dict, self.method)

    register_auxiliary_model_wrapper(key=WRAPPER_KEY)(KdzooMethodModules)


def torchdistill_step(
    stack: str, teacher: nn.Module, student: nn.Module, x: Tensor, y: Tensor, lr: float = 0.01
) -> Callable[[], None]:
    """A closure doing one training step of ``stack`` through torchdistill's ``DistillationBox``.

    Built on ``x.device``; the closure feeds ``x, y`` directly, never syncs and never prints. The
    returned :class:`TorchdistillStep` also exposes ``box`` and ``last_loss``.
    """
    _quiet()
    from torchdistill.core.distillation import DistillationBox

    _register_wrapper()
    device = x.device
    teacher = copy.deepcopy(teacher).to(device).eval().requires_grad_(False)
    student = student.to(device)
    config = torchdistill_config(stack, teacher, student, x, lr)
    device_ids = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    )
    box = DistillationBox(teacher, student, {}, config, device, device_ids, False, 1)
    box.pre_epoch_process(epoch=0)  # clears the I/O dicts and puts the student in train mode
    box.teacher_model.eval()
    return TorchdistillStep(box, x, y)
