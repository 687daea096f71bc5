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
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from timm.utils import ModelEmaV3


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
        self._scheduler: StepSchedule | None = None
        self._ddp: nn.Module | None = None
        self._module: TrainingStep | None = None
        self.clipping: tuple[float | None, str] = (None, "norm")
        train = config.train
        # the EMA follows the student over the whole run (every stage); timm keeps its weights in float32
        self.ema: ModelEmaV3 | None = ema_of(self.student, train.ema_decay, train.ema_warmup) if train.ema else None
        self.ema_updates = 0

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The stage's optimizer (:meth:`begin` makes it)."""
        if self._optimizer is None:
            raise RuntimeError("Step.begin(stage) makes the optimizer; call it first")
        return self._optimizer

    @property
    def scheduler(self) -> StepSchedule:
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
        self._optimizer = build_optimizer(cfg, params, no_weight_decay(cfg, self.student, self.modules))
        self._scheduler = StepSchedule(cfg, self._optimizer, stage.epochs, self.steps_per_epoch)
        self.clipping = (cfg.clip_grad, cfg.clip_mode)

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

    def ema_state(self) -> dict[str, Any] | None:
        """The EMA's weights and update count (``None`` without ``train.ema``), for the checkpoint."""
        if self.ema is None:
            return None
        return {"weights": self.ema.module.state_dict(), "updates": self.ema_updates}

    def load_ema_state(self, state: dict[str, Any] | None) -> None:
        """The checkpoint's EMA; a run that turns ``train.ema`` on when resumed starts it from the student."""
        if self.ema is None:
            return
        if state is None:
            self.ema.module.load_state_dict(self.student.state_dict())
            return
        self.ema.module.load_state_dict(state["weights"])
        self.ema_updates = int(state["updates"])

    def load_state_dict(self, optimizer: dict[str, Any], scheduler: dict[str, Any], scaler: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(optimizer)
        self.scheduler.load_state_dict(scheduler)
        if scaler:  # empty when loss scaling is off
            self.scaler.load_state_dict(scaler)

    # ------------------------------------------------------------------ a step
    def __call__(self, batch: Batch, when: When) -> StepResult:
        """One optimisation step on ``batch``, without any host sync (``loss`` is ``None`` for a
        step skipped as non-finite under ``train.nonfinite: skip``). Under ``train.accumulate: k`` the
        batch runs as k micro-batches whose gradients add up (each loss weighted by its share of the
        batch), then one update: the same step as the whole batch for losses that are means over samples."""
        first_of_stage = self._module is not None and self._ddp is None  # without DDP, to learn what it needs
        self.optimizer.zero_grad(set_to_none=True)
        parts = micro_batches(batch, self.config.train.accumulate)
        results: list[tuple[float, StepResult]] = []
        reached: set[int] = set()
        for i, part in enumerate(parts):
            share = len(part.labels) / len(batch.labels)
            defer = self._ddp is not None and i + 1 < len(parts)  # DDP averages once, with the last part
            with self._ddp.no_sync() if defer else contextlib.nullcontext():  # type: ignore[union-attr, operator]
                result = self.losses(part, when)
                loss = result.loss
                assert loss is not None  # the objective always computes one
                results.append((share, result))
                if self.config.train.nonfinite == "skip" and not bool(torch.isfinite(loss)):  # a host sync
                    self.optimizer.zero_grad(set_to_none=True)
                    return dataclasses.replace(merged(results), loss=None)
                if first_of_stage:
                    reached |= reached_parameters(loss)
                self._backward(self.scaler.scale(loss * share if len(parts) > 1 else loss))
        trained = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self._module is not None and first_of_stage:
            average_gradients(trained, self.processes)
            self._ddp = wrap(self._module, self.processes, any(id(p) not in reached for p in trained))
        self._clip(trained)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema_updates += 1
            self.ema.update(self.student, step=self.ema_updates)
        return merged(results)

    def _clip(self, params: list[nn.Parameter]) -> None:
        """``optim.clip_grad``, on the gradients as they are applied (unscaled from fp16's loss scale)."""
        value, mode = self.clipping
        if value is None:
            return
        from timm.utils import dispatch_clip_grad

        self.scaler.unscale_(self.optimizer)
        dispatch_clip_grad([p for p in params if p.grad is not None], value, mode=mode)

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


def ema_of(student: nn.Module, decay: float, warmup: bool) -> ModelEmaV3:
    from timm.utils import ModelEmaV3

    return ModelEmaV3(student, decay=decay, use_warmup=warmup)


# ---------------------------------------------------------------------- accumulation
def micro_batches(batch: Batch, parts: int) -> list[Batch]:
    """``batch`` in ``parts`` strided slices (rows ``j, j + parts, ...``; fewer slices when it has fewer
    samples); the teacher's cached outputs and the soft targets are sliced with it (every tensor whose
    first dimension is the batch's). Strided, not contiguous: under torchrun each process holds a
    contiguous share of the global batch, and the j-th strided slices of the shares make the j-th strided
    slice of the global batch, so N processes form the micro-batches one process forms (with global
    batch norm, the same statistics)."""
    size = len(batch.labels)
    parts = min(parts, size)
    if parts <= 1:
        return [batch]

    def cut(value: Any, j: int) -> Any:
        if isinstance(value, Tensor) and value.ndim and value.shape[0] == size:
            return value[j::parts]
        if isinstance(value, dict):
            return {k: cut(v, j) for k, v in value.items()}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: cut(getattr(value, f.name), j) for f in dataclasses.fields(value)}
            return dataclasses.replace(value, **fields)  # type: ignore[type-var]
        return value

    return [cut(batch, j) for j in range(parts)]


def merged(results: list[tuple[float, StepResult]]) -> StepResult:
    """One step's result from its micro-batches' (share of the batch, result): the loss and the terms
    weighted by share, the logits in order."""
    if len(results) == 1:
        return results[0][1]
    last = results[-1][1]

    def weighted(values: list[tuple[float, Tensor]]) -> Tensor:
        return torch.stack([share * value.detach() for share, value in values]).sum(0)

    losses = [(share, r.loss) for share, r in results if r.loss is not None]
    parts = [r.logits for _, r in results if r.logits is not None]
    logits = None
    if len(parts) == len(results):  # back in the batch's order (the micro-batches are strided)
        logits = parts[0].new_empty((sum(len(p) for p in parts), *parts[0].shape[1:]))
        for j, part in enumerate(parts):
            logits[j :: len(parts)] = part
    return StepResult(
        loss=weighted(losses),
        terms={name: weighted([(share, r.terms[name]) for share, r in results]) for name in last.terms},
        weights=last.weights,
        logits=logits,
    )


# ---------------------------------------------------------------------- a stage's optimizer and schedule
def build_optimizer(
    cfg: OptimConfig, params: Iterable[nn.Parameter], no_decay: Iterable[nn.Parameter] = ()
) -> torch.optim.Optimizer:
    """The optimizer the ``optim`` config section names (timm's ``create_optimizer_v2``), over ``params``;
    those also in ``no_decay`` get no weight decay."""
    from timm.optim import create_optimizer_v2

    params, skipped = list(params), {id(p) for p in no_decay}
    groups: list[dict[str, Any]] = [
        {"params": [p for p in params if id(p) not in skipped]},
        {"params": [p for p in params if id(p) in skipped], "weight_decay": 0.0},
    ]
    opt = {"sgd": "nesterov" if cfg.nesterov else "momentum"}.get(cfg.name, cfg.name)  # timm's "sgd" is Nesterov
    return create_optimizer_v2(
        [g for g in groups if g["params"]], opt=opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum
    )


def no_weight_decay(cfg: OptimConfig, *models: nn.Module) -> list[nn.Parameter]:
    """What ``optim.decay_norm_bias: false`` spares from weight decay, by timm's rule: biases, norm weights
    (every parameter of fewer than 2 dimensions) and what each model's ``no_weight_decay()`` names
    (a ViT's position embedding and class token)."""
    if cfg.decay_norm_bias:
        return []
    spared = []
    for model in models:
        named = set(getattr(model, "no_weight_decay", lambda: ())())
        spared += [p for name, p in model.named_parameters() if p.ndim <= 1 or name in named]
    return spared


class StepSchedule:
    """A stage's learning rate per step: timm's scheduler (cosine, multistep or constant, after a linear
    warmup) evaluated at the step count. Every rate is a closed-form function of the step, so a resumed
    run sets the count and is exact, and one resumed with more epochs continues on the schedule of its
    new length (a recursive form would carry the old one)."""

    def __init__(self, cfg: OptimConfig, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int):
        from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler, StepLRScheduler
        from timm.scheduler.scheduler import Scheduler

        total = max(epochs * steps_per_epoch, 1)
        warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total)
        timed: dict[str, Any] = {
            "warmup_t": warmup,
            "warmup_lr_init": cfg.warmup_lr,
            "warmup_prefix": True,
            "t_in_epochs": False,
        }
        self.timm: Scheduler
        if cfg.scheduler == "cosine":
            cosine_log = logging.getLogger(CosineLRScheduler.__module__)
            level = cosine_log.level
            cosine_log.setLevel(logging.ERROR)  # its warning that a one-step cosine stays at lr is no news here
            try:
                self.timm = CosineLRScheduler(optimizer, t_initial=max(total - warmup, 1), lr_min=cfg.min_lr, **timed)
            finally:
                cosine_log.setLevel(level)
        elif cfg.scheduler == "multistep":
            # timm applies milestone d at step d - 1 (its historical convention); + 1 makes milestone epoch m's
            # first update the first at the lowered rate, as in RepDistiller (torch's MultiStepLR)
            decays = [m * steps_per_epoch - warmup + 1 for m in cfg.milestones]
            self.timm = MultiStepLRScheduler(optimizer, decay_t=decays, decay_rate=cfg.gamma, **timed)
        else:
            self.timm = StepLRScheduler(optimizer, decay_t=float("inf"), decay_rate=1.0, **timed)
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        self.timm.step_update(self.steps)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # "last_epoch": the step count as checkpoints before timm's schedules held it (a LambdaLR's)
        self.steps = int(state.get("steps", state.get("last_epoch", 0)))
        self.timm.step_update(self.steps)


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
        # the sums at the last log point and the steps counted (not skipped) since: kept in a mid-epoch
        # checkpoint, so a resumed epoch's first log point has the same values as the run never stopped
        self.logged = {k: torch.tensor(v) for k, v in partial.get("logged", {}).items()}
        self.counted_since_log = partial.get("counted_since_log", 0)

    def add(self, step: int, loss: Tensor | None, terms: dict[str, Tensor], batch: int) -> None:
        """Count one step; ``loss`` is ``None`` for a step skipped as non-finite."""
        if loss is None:
            self.skipped += 1
            return
        self.seen += batch
        self.counted_since_log += 1
        for name, value in {"loss": loss, **terms}.items():
            value = value.detach()
            self.sums[name] = self.sums.get(name, 0.0) + value
            bad = self.first_bad.get(name)
            if bad is None:  # made once per term, not every step
                bad = self.first_bad[name] = torch.tensor(-1)
            self.first_bad[name] = torch.where((bad < 0) & ~torch.isfinite(value), step + 1, bad)

    def partial(self) -> dict[str, Any]:
        """What a mid-epoch checkpoint keeps, so the resumed epoch logs the same means."""
        return {
            "sums": {k: float(v) for k, v in self.sums.items()},
            "seen": self.seen,
            "skipped": self.skipped,
            "logged": {k: float(v) for k, v in self.logged.items()},
            "counted_since_log": self.counted_since_log,
        }

    def running_means(self, steps_done: int) -> dict[str, str]:
        return {k: f"{(v / max(steps_done, 1)).item():.4g}" for k, v in self.sums.items()}

    def means_since_log(self, dist: DistInfo) -> dict[str, float]:
        """Per-step means since the last call (or the epoch's start), averaged over processes, to 7
        significant digits: what the trackers log per step. Every process calls it at the same steps."""
        since = {k: v - self.logged.get(k, 0.0) for k, v in self.sums.items()}
        counted = max(self.counted_since_log, 1)
        self.logged, self.counted_since_log = dict(self.sums), 0
        return {k: significant(float(v) / counted) for k, v in mean_across(since, dist).items()}

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
