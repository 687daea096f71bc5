"""One optimisation step: ``step(batch, when) -> StepResult``, the whole of it in one place.

The objective computes the loss (:meth:`kdzoo.engine.objective.Objective.loss`); the step owns what
turns it into an update: which parameters a stage trains, the stage's optimizer and per-step LR
schedule (built here from the ``optim`` config section), autocast and the fp16 loss scaler, the
backward pass, the non-finite policy (a step skipped, or the run stopped at the first NaN/inf term:
:class:`EpochTotals`, the steps' running totals the loop keeps), and, under torchrun, data
parallelism. The loop (:class:`kdzoo.engine.loop.Trainer`) feeds it batches and checkpoints its
state; the benchmark and the conformance kit build one without a loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdzoo.api import Batch, KdzooError, Stage, StepResult, When
from kdzoo.config import OptimConfig, RunConfig, build
from kdzoo.data import DistInfo
from kdzoo.engine.distributed import TrainingStep, any_across, average_gradients, mean_across, reached_parameters, wrap
from kdzoo.engine.extract import out_of_memory
from kdzoo.engine.objective import Objective
from kdzoo.errors import error_line
from kdzoo.reporting import significant


class CompiledBackwardFailed(KdzooError):
    """The backward pass of a compiled step failed: the run cannot go on compiled (the loop says how
    to go on without it)."""

    def __init__(self, reason: str, settings: list[str]):
        super().__init__(reason)
        self.reason, self.settings = reason, settings


class Step:
    """The student and the methods' modules trained by the objective, one batch at a time."""

    def __init__(self, objective: Objective, config: RunConfig, processes: DistInfo, steps_per_epoch: int):
        self.objective, self.config, self.processes = objective, config, processes
        self.steps_per_epoch = steps_per_epoch
        # fp16 needs loss scaling against underflow; bf16 and fp32 do not (the scaler is then a no-op)
        device = next(self.student.parameters()).device
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.train.precision == "fp16")
        if config.train.precision == "fp16":
            # the scaler skips the optimizer on steps whose gradients overflowed (it then lowers the
            # scale); the schedule still advancing one step there is intended, not a misordering
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        self.device_type = device.type
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._ddp: nn.Module | None = None
        self._module: TrainingStep | None = None

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The stage's optimizer (:meth:`begin` makes it)."""
        if self._optimizer is None:
            raise RuntimeError("Step.begin(stage) makes the optimizer; call it first")
        return self._optimizer

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        """The stage's per-step LR schedule (:meth:`begin` makes it)."""
        if self._scheduler is None:
            raise RuntimeError("Step.begin(stage) makes the schedule; call it first")
        return self._scheduler

    @property
    def student(self) -> nn.Module:
        return self.objective.student_tap.model

    @property
    def modules(self) -> nn.ModuleDict:
        return self.objective.method_modules

    # ------------------------------------------------------------------ a stage
    def begin(self, stage: Stage) -> None:
        """What ``stage`` trains, with a fresh optimizer and per-step LR schedule over it."""
        params = self.set_trainable(stage)
        if self.processes.enabled:  # DDP registers what trains when it is built: after the stage's first step
            self._ddp, self._module = None, TrainingStep(self.student, self.objective)
        cfg = self.config.optim
        cfg = build(type(cfg), {**dataclasses.asdict(cfg), **stage.optim}, "stage.optim") if stage.optim else cfg
        cfg = dataclasses.replace(cfg, lr=cfg.lr * stage.lr_scale)
        self._optimizer = build_optimizer(cfg, params)
        self._scheduler = build_scheduler(cfg, self._optimizer, stage.epochs, self.steps_per_epoch)

    def set_trainable(self, stage: Stage) -> list[nn.Parameter]:
        every = [*self.student.parameters(), *self.modules.parameters()]
        chosen = list(stage.trainable(self.student, self.modules)) if stage.trainable else every
        chosen_ids = {id(p) for p in chosen}
        for p in every:
            p.requires_grad_(id(p) in chosen_ids)
        return chosen

    def state_dict(self) -> dict[str, Any]:
        """The stage's optimizer, schedule and loss scaler (empty when scaling is off)."""
        scaler = self.scaler.state_dict() if self.scaler.is_enabled() else {}
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "scaler": scaler}

    def load_state_dict(self, optimizer: dict[str, Any], scheduler: dict[str, Any], scaler: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(scheduler)
        if scaler:  # empty when loss scaling is off
            self.scaler.load_state_dict(scaler)

    # ------------------------------------------------------------------ a step
    def __call__(self, batch: Batch, when: When) -> StepResult:
        """One optimisation step on ``batch``, without any host sync (``loss`` is ``None`` for a
        step skipped as non-finite under ``train.nonfinite: skip``)."""
        first_of_stage = self._module is not None and self._ddp is None  # without DDP, to learn what it needs
        result = self.losses(batch, when)
        loss = result.loss
        assert loss is not None  # the objective always computes one
        self.optimizer.zero_grad(set_to_none=True)
        if self.config.train.nonfinite == "skip" and not bool(torch.isfinite(loss)):  # a host sync
            return dataclasses.replace(result, loss=None)
        reached = reached_parameters(loss) if first_of_stage else set()
        self._backward(self.scaler.scale(loss))
        if self._module is not None and first_of_stage:
            trained = [p for group in self.optimizer.param_groups for p in group["params"]]
            average_gradients(trained, self.processes)
            self._ddp = wrap(self._module, self.processes, any(id(p) not in reached for p in trained))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return result

    def losses(self, batch: Batch, when: When) -> StepResult:
        """The objective's loss for ``batch`` under the run's autocast (and DDP), without an update."""
        if self.config.train.channels_last and batch.inputs.ndim == 4:
            batch = dataclasses.replace(batch, inputs=batch.inputs.contiguous(memory_format=torch.channels_last))
        with self._autocast():
            return self._ddp(batch, when) if self._ddp is not None else self.objective.loss(batch, when)

    def _backward(self, loss: torch.Tensor) -> None:
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
            raise CompiledBackwardFailed(error_line(exc), compiled) from exc

    def _autocast(self):
        precision = self.config.train.precision
        if precision in ("fp32", "fp64"):
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


# ---------------------------------------------------------------------- a stage's optimizer and schedule
def build_optimizer(cfg: OptimConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer the ``optim`` config section names, over ``params``."""
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
    make = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return make(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(
    cfg: OptimConfig, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per batch. ``milestones`` are epochs of the stage.

    Every schedule is a closed-form function of the step, so a run resumed with more epochs
    continues on the schedule of its new length (a recursive form would carry the old length)."""
    total_steps = max(epochs * steps_per_epoch, 1)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
        )
    if cfg.scheduler == "multistep":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cfg.gamma ** sum(step >= m * steps_per_epoch for m in cfg.milestones)
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


# ---------------------------------------------------------------------- the steps of an epoch, summed
class EpochTotals:
    """An epoch's running totals of the steps' results: the loss and every term, summed on the device
    (no host sync per step), with the first step at which each became NaN/inf (the non-finite policy's
    other half: a run without ``train.nonfinite=skip`` stops there, at the next log point)."""

    def __init__(self, partial: dict[str, Any] | None = None):
        partial = partial or {}
        self.sums: dict[str, Tensor] = {k: torch.tensor(v) for k, v in partial.get("sums", {}).items()}
        self.seen = partial.get("seen", 0)  # images trained in this epoch, before a resume included
        self.seen_before = self.seen  # ...of which this process trained none (its rate leaves them out)
        self.skipped = partial.get("skipped", 0)
        self.first_bad: dict[str, Tensor] = {}  # term -> first step where it was NaN/inf, on the device

    def add(self, step: int, loss: Tensor | None, terms: dict[str, Tensor], batch: int) -> None:
        """Count one step; ``loss`` is ``None`` for a step skipped as non-finite."""
        if loss is None:
            self.skipped += 1
            return
        self.seen += batch
        for name, value in {"loss": loss, **terms}.items():
            value = value.detach()
            self.sums[name] = self.sums.get(name, 0.0) + value
            bad = self.first_bad.get(name)
            if bad is None:  # made once per term, not every step
                bad = self.first_bad[name] = torch.tensor(-1)
            self.first_bad[name] = torch.where((bad < 0) & ~torch.isfinite(value), step + 1, bad)

    def partial(self) -> dict[str, Any]:
        """What a mid-epoch checkpoint keeps, so the resumed epoch logs the same means."""
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "seen": self.seen, "skipped": self.skipped}

    def running_means(self, steps_done: int) -> dict[str, str]:
        return {k: f"{(v / max(steps_done, 1)).item():.4g}" for k, v in self.sums.items()}

    def rate(self, seconds: float) -> float:
        return (self.seen - self.seen_before) / max(seconds, 1e-9)

    def means(self, steps: int, dist: DistInfo) -> dict[str, float]:
        """Per-step means over the epoch, averaged over processes, to 7 significant digits."""
        counted = max(steps - self.skipped, 1)
        return {k: significant(float(v) / counted) for k, v in mean_across(self.sums, dist).items()}

    def stop_if_nonfinite(self, stage: Stage, epoch: int, run_dir: Path, dist: DistInfo) -> None:
        """A one-line error naming the first step and term that went NaN/inf (on any process)."""
        bad = {name: int(step) for name, step in self.first_bad.items() if int(step) > 0}
        if not any_across(bool(bad), dist):
            return
        bad = bad or {"loss (on another process)": 0}
        step = min(bad.values())
        terms = sorted(n for n, s in bad.items() if s == step and n != "loss") or ["loss"]
        last = run_dir / "last.pt"
        kept = f"the last good checkpoint is kept ({last})" if last.is_file() else "no checkpoint was written yet"
        raise KdzooError(
            f"stage '{stage.name}' epoch {epoch + 1} step {step}: loss term {', '.join(map(repr, terms))} "
            f"became NaN/inf; {kept}; lower optim.lr or the term's weight, or set train.nonfinite=skip"
        )
