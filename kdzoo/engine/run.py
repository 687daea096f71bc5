"""The run as hooks see it, and one optimisation step: the part of the trainer the loop builds on.

:class:`RunBase` holds what :func:`kdzoo.engine.build.build_run` assembled and implements
:class:`kdzoo.Run` (the operations a method's lifecycle hooks may call), the optimizer of a stage,
and one training step. The loop itself is :class:`kdzoo.engine.loop.Trainer`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdzoo.api import KdzooError, Stage
from kdzoo.config import build
from kdzoo.engine.distributed import TrainingStep, average_gradients, reached_parameters, wrap
from kdzoo.engine.evaluate import evaluate
from kdzoo.engine.extract import describe, out_of_memory
from kdzoo.engine.locking import claim_new_run_dir
from kdzoo.engine.optim import build_optimizer, build_scheduler
from kdzoo.engine.parts import RunParts
from kdzoo.engine.signals import StopRequests
from kdzoo.errors import error_line
from kdzoo.models import create_model


class RunBase:
    """One run's parts, the :class:`kdzoo.Run` operations, a stage's optimizer and one step."""

    def __init__(self, parts: RunParts, run_dir: str | Path):
        p = parts
        self.config, self.dist, self.device, self.data = p.config, p.dist, p.device, p.data
        self.student, self.objective, self.stages, self.scaler = p.student, p.objective, p.stages, p.scaler
        self.teacher_cache, self.teacher_metrics = p.teacher_cache, p.teacher_metrics
        self.show_progress, self.label = p.show_progress, p.label
        self.run_dir = Path(run_dir)
        self.history: list[dict[str, Any]] = []
        self.method_teacher: str | None = None  # the name of a teacher a method set (a trained generation)
        self.ddp: nn.Module | None = None
        self.stop = StopRequests()

    # ------------------------------------------------------------------ the run, as hooks see it
    pm = property(lambda self: self.objective.pm)
    modules = property(lambda self: self.objective.method_modules)
    teacher = property(lambda self: self.objective.teacher)
    teacher_info = property(lambda self: self.objective.teacher_info)
    student_info = property(lambda self: self.objective.student_info)

    def student_copy(self) -> nn.Module:
        return copy.deepcopy(self.student)

    def new_student(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            cfg = dataclasses.replace(self.config.student, pretrained=False, checkpoint=None)
            return create_model(cfg, "student", self.data.num_classes, self.data.in_chans)

    def set_teacher(self, model: nn.Module, name: str) -> None:
        shapes = {k: v.shape for k, v in self.student.state_dict().items()}
        if {k: v.shape for k, v in model.state_dict().items()} != shapes:
            raise KdzooError("run.set_teacher takes a model of the student's architecture (saved with the run)")
        self.teacher_cache = None  # cached outputs belong to the previous teacher
        self.objective.set_teacher(model, describe(model, self.config.student.model, self.config.data.img_size))
        self.method_teacher = name
        self.teacher_metrics = self._evaluate(model, "teacher", name)

    def compute_losses(
        self, x: Tensor, y: Tensor, stage: Stage, epoch: int, progress: float, teacher_out=None, indices=None
    ):
        """Forward both models once (the teacher not at all when its outputs are given); return
        (total loss, unweighted terms, weights). ``indices``: the samples' positions in the training set."""
        return self.objective.compute(x, y, stage, epoch, progress, teacher_out, indices)

    def claim_new_run_dir(self) -> None:
        """Move to a new run directory named after ``run_dir`` (``-2``, ``-3``... when taken), created
        atomically by the main process and the same on every process."""
        chosen = [claim_new_run_dir(self.run_dir) if self.dist.main else None]
        if self.dist.enabled:
            torch.distributed.broadcast_object_list(chosen, src=0)
        self.run_dir = chosen[0]

    def train_step(
        self, x, y, stage: Stage, epoch: int, progress: float, optimizer, scheduler, teacher_out=None, indices=None
    ):
        """One optimisation step; returns (loss, terms, weights) without any host sync (loss is
        ``None`` for a step skipped as non-finite under ``train.nonfinite: skip``)."""
        if self.config.train.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        first_of_stage = self.dist.enabled and self.ddp is None  # run without DDP, to learn what it needs
        with self._autocast():
            step = self.ddp if self.ddp is not None else self.compute_losses
            loss, terms, weights = step(x, y, stage, epoch, progress, teacher_out, indices)
        optimizer.zero_grad(set_to_none=True)
        if self.config.train.nonfinite == "skip" and not bool(torch.isfinite(loss)):  # a host sync, this policy only
            return None, terms, weights
        reached = reached_parameters(loss) if first_of_stage else set()
        self._backward(self.scaler.scale(loss))
        if first_of_stage:
            trained = [p for group in optimizer.param_groups for p in group["params"]]
            average_gradients(trained, self.dist)
            self.ddp = wrap(self._step_module, self.dist, any(id(p) not in reached for p in trained))
        self.scaler.step(optimizer)
        self.scaler.update()
        scheduler.step()
        return loss, terms, weights

    def _backward(self, loss: Tensor) -> None:
        try:
            loss.backward()
        except (RuntimeError, MemoryError) as exc:
            if out_of_memory(exc):
                data = self.config.data
                raise KdzooError(
                    f"training ran out of memory in the backward pass (data.batch_size={data.batch_size}, "
                    f"data.img_size={data.img_size}); lower either, or set train.precision=bf16"
                ) from None
            compiled = [key for key in ("compile", "compile_objective") if getattr(self.config.train, key)]
            if not compiled:
                raise
            # the forward pass compiled, so no eager fallback caught it; the step has already run the
            # methods' state updates, so retrying it eagerly here would not be the same step
            off = " ".join(f"--set train.{key}=false" for key in compiled)
            how = f"run it again with {off} (no checkpoint was written yet)"
            if (self.run_dir / "last.pt").is_file():
                how = f"go on from the last checkpoint without it: kdzoo run --resume {self.run_dir} {off}"
            raise KdzooError(
                f"the backward pass of the compiled step failed ({error_line(exc)}); {how}, "
                f"or pick another train.compile_backend"
            ) from exc

    def optimizer_for(self, stage: Stage):
        """A fresh optimizer and per-step LR schedule over the parameters ``stage`` trains."""
        params = self.set_trainable(stage)
        if self.dist.enabled:  # DDP registers what trains when it is built: after the stage's first step
            self.ddp = None
            self._step_module = TrainingStep(self.student, self.objective)
        cfg = self.config.optim
        cfg = build(type(cfg), {**dataclasses.asdict(cfg), **stage.optim}, "stage.optim") if stage.optim else cfg
        cfg = dataclasses.replace(cfg, lr=cfg.lr * stage.lr_scale)
        optimizer = build_optimizer(cfg, params)
        return optimizer, build_scheduler(cfg, optimizer, stage.epochs, len(self.data.train))

    def set_trainable(self, stage: Stage) -> list[nn.Parameter]:
        every = [*self.student.parameters(), *self.modules.parameters()]
        chosen = list(stage.trainable(self.student, self.modules)) if stage.trainable else every
        chosen_ids = {id(p) for p in chosen}
        for p in every:
            p.requires_grad_(id(p) in chosen_ids)
        return chosen

    def _evaluate(self, model: nn.Module, role: str, name: str | None = None) -> dict[str, float]:
        who = f"{role} ({name or getattr(self.config, role).model})"
        return evaluate(model, self.data.val.epoch(0), self.data.num_classes, who)

    def _autocast(self):
        precision = self.config.train.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)

    def _quiet(self) -> bool | None:
        return None if self.show_progress is None else not self.show_progress
