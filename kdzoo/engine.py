"""The training loop: one readable pass through stages, epochs and steps, with hooks at named points.

Per step: the teacher runs once under ``inference_mode`` and the student once, each exposing
exactly the union of the taps the active methods declared; the core adds the label loss ``ce``;
every method returns named, unweighted terms; weights come from their own hook; the stage says
which terms are on and which parameters train.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from kdzoo import checkpoint, locking
from kdzoo.config import RunConfig
from kdzoo.data import DataBundle, load_data
from kdzoo.distributed import DistInfo, any_across, global_batchnorm, init_from_env, mean_across, wrap
from kdzoo.errors import KdzooError
from kdzoo.features import FeatureExtractor, ModelInfo, describe
from kdzoo.locking import RunDirLock, claim_new_run_dir
from kdzoo.metrics import append_jsonl, evaluate
from kdzoo.models import check_label_sets, check_pair, create_model
from kdzoo.objective import Objective
from kdzoo.optim import build_optimizer, build_scheduler
from kdzoo.plugins import Registry, call_hook
from kdzoo.reporting import PlotReporter, TensorBoardReporter
from kdzoo.schedule import Stage
from kdzoo.teacher_cache import TeacherOutputCache, check_cacheable, data_settings, file_digest
from kdzoo.typed import as_dict, build


def pick_device(name: str, dist_info: DistInfo | None = None) -> torch.device:
    if name == "auto":
        local = dist_info.local_rank if dist_info is not None else 0
        return torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise KdzooError(f"config key 'train.device': unknown device '{name}' (use auto, cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KdzooError("config key 'train.device': CUDA was asked for but is not available here")
    return device


class Trainer:
    """One distillation run. Build it, then call :meth:`fit`.

    ``teacher`` and ``student`` may be given directly (library use); otherwise they are built from
    the config (the teacher from a checkpoint, cached pretrained weights, or trained by kdzoo first
    and cached).
    """

    def __init__(
        self,
        config: RunConfig,
        registry: Registry,
        run_dir: str | Path,
        teacher: nn.Module | None = None,
        data: DataBundle | None = None,
        student: nn.Module | None = None,
        show_progress: bool | None = None,
        label: str = "",
        distributed: bool = True,
    ):
        self.config, self.run_dir = config, Path(run_dir)
        self.dist = init_from_env() if distributed else DistInfo()
        self.show_progress, self.label = (show_progress if self.dist.main else False), label
        checkpoint.seed_everything(config.train.seed)  # the same seed everywhere: identical replicas
        self.device = pick_device(config.train.device, self.dist)
        self.data = data or load_data(config.data, config.train.seed)
        self.data.train.to(self.device)
        self.data.val.to(self.device)
        infos = [registry.get(name) for name in config.methods]
        self.methods = {info.name: info.factory(config.method_configs[info.name]) for info in infos}
        needs_teacher = any(info.wants_teacher(config.method_configs[info.name]) for info in infos)
        if needs_teacher:
            check_label_sets(config, self.data.num_classes)
        self.student = student or create_model(config.student, "student", self.data.num_classes, self.data.in_chans)
        self.registry = registry
        self.teacher_cache: TeacherOutputCache | None = None
        self.teacher_metrics: dict[str, float] | None = None
        teacher_info = None
        use_cache = needs_teacher and teacher is None and config.teacher.cache
        if use_cache:
            self.teacher_cache = TeacherOutputCache(
                self._teacher_identity(), data_settings(config), check_cacheable(self.data.train)
            )
            teacher_info = self.teacher_cache.teacher_info()
        if needs_teacher and teacher is None and teacher_info is None:
            teacher = self._obtain_teacher()
        teacher = teacher if needs_teacher else None
        check_pair(teacher, self.student, config.teacher.model, config.student.model)
        img = config.data.img_size
        if teacher is not None:
            teacher_info = describe(teacher, config.teacher.model, img)
        self.student.to(self.device)
        self.objective = Objective(
            self.methods,
            self.student,
            describe(self.student, config.student.model, img),
            None if use_cache else teacher,  # with the cache, the teacher's outputs come from disk
            teacher_info,
        ).to(self.device)
        if use_cache:
            self._warm_teacher_cache(teacher, teacher_info)
            teacher = None
        self.teacher_from_run = False  # True once a stage boundary made a trained student the teacher
        self.stages: list[Stage] = self.objective.schedule(config.train.epochs)
        if config.train.channels_last:
            self.student.to(memory_format=torch.channels_last)
            if teacher is not None:
                teacher.to(memory_format=torch.channels_last)
        # fp16 needs loss scaling against underflow; bf16 and fp32 do not (the scaler is then a no-op)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.train.precision == "fp16")
        if self.scaler.is_enabled():
            # the scaler skips the optimizer on steps whose gradients overflowed (it then lowers the
            # scale); the schedule still advancing one step there is intended, not a misordering
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        if config.train.compile:
            self.objective.compile()
        self.ddp = None
        if self.dist.enabled:
            if config.data.batch_size % self.dist.world:
                raise KdzooError(
                    f"data.batch_size={config.data.batch_size} is the global batch and must split evenly over "
                    f"{self.dist.world} processes"
                )
            global_batchnorm(self.student)
            global_batchnorm(self.objective.method_modules)
            self.data.train.shard_info = self.dist
            if self.dist.main and show_progress is not False:
                tqdm.write(
                    f"distributed: {self.dist.world} processes ({torch.distributed.get_backend()}), global batch "
                    f"{config.data.batch_size} = {self.dist.world} x {config.data.batch_size // self.dist.world}, "
                    f"optim.lr={config.optim.lr} for the global batch"
                )
        self.history: list[dict[str, Any]] = []
        self.skipped_steps = 0
        self._stop_signal: str | None = None

    def _obtain_teacher(self) -> nn.Module:
        from kdzoo.teacher import obtain_teacher

        rng = checkpoint.rng_state()  # a cached or freshly trained teacher must not shift this run's RNG
        with self._main_first():  # rank 0 trains and caches the teacher, the others then read it
            teacher = obtain_teacher(self.config, self.data, self.registry, self.show_progress)
        checkpoint.restore_rng(rng)
        return teacher

    @contextlib.contextmanager
    def _main_first(self):
        if self.dist.enabled and not self.dist.main:
            torch.distributed.barrier()
        yield
        if self.dist.enabled and self.dist.main:
            torch.distributed.barrier()

    def _teacher_identity(self) -> str:
        """What makes the teacher this teacher: its weights file's digest (training it first if needed)."""
        from kdzoo.teacher import teacher_weights_file

        weights = teacher_weights_file(self.config)
        if weights is None:
            self._obtain_teacher()
            weights = teacher_weights_file(self.config)
        cfg = self.config.teacher
        return f"{cfg.model}:{json.dumps(cfg.kwargs, sort_keys=True)}:{file_digest(weights)}"

    def _warm_teacher_cache(self, teacher: nn.Module | None, info: ModelInfo) -> None:
        with self._main_first():
            self._fill_teacher_cache(teacher, info)

    def _fill_teacher_cache(self, teacher: nn.Module | None, info: ModelInfo) -> None:
        cache = self.teacher_cache
        if not cache.select(self.objective.taps):
            waiting = f"teacher-output cache {cache.root}: another process is writing it; waiting"
            with locking.writing(cache.root, lambda: tqdm.write(waiting) if self.show_progress is not False else None):
                self._write_teacher_cache(teacher, info)
        self.teacher_metrics = cache.teacher_metrics()
        if self.show_progress is not False:
            tqdm.write(cache.describe())

    def _write_teacher_cache(self, teacher: nn.Module | None, info: ModelInfo) -> None:
        cache = self.teacher_cache
        if not cache.select(self.objective.taps):  # again: it may have been written while we waited
            teacher = teacher or self._obtain_teacher()
            teacher.requires_grad_(False).eval().to(self.device)
            taps = self.objective.taps
            cache.fill(
                FeatureExtractor(teacher, info, taps.teacher, taps.teacher_embedding, taps.teacher_summaries),
                self.config.data.eval_batch_size,
                self.device,
            )
            cache.remember(info, evaluate(teacher, self.data.val.epoch(0), self.data.num_classes, self._who("teacher")))
            cache.select(taps)

    # the objective's parts, under the names plugins and tests use
    pm = property(lambda self: self.objective.pm)
    modules = property(lambda self: self.objective.method_modules)
    teacher = property(lambda self: self.objective.teacher)
    teacher_info = property(lambda self: self.objective.teacher_info)
    student_info = property(lambda self: self.objective.student_info)

    def compute_losses(self, x: Tensor, y: Tensor, stage: Stage, epoch: int, progress: float, teacher_out=None):
        """Forward both models once (the teacher not at all when its outputs are given); return
        (total loss, unweighted terms, weights)."""
        return self.objective.compute(x, y, stage, epoch, progress, teacher_out)

    # ----------------------------------------------------------------------------- for stage hooks
    def set_teacher(self, model: nn.Module) -> None:
        """Make ``model`` (a student architecture trained by this run) the teacher from now on."""
        self.teacher_cache = None  # cached outputs belong to the previous teacher
        self.objective.set_teacher(model, describe(model, self.config.student.model, self.config.data.img_size))
        self.teacher_from_run = True
        self.teacher_metrics = evaluate(
            model, self.data.val.epoch(0), self.data.num_classes, "teacher (previous generation)"
        )

    def fresh_student(self, generation: int) -> None:
        """Re-initialise the student's weights in place (a new generation), reproducibly per generation."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.train.seed * 1_000 + generation)
            new = create_model(
                dataclasses.replace(self.config.student, pretrained=False, checkpoint=None),
                "student",
                self.data.num_classes,
                self.data.in_chans,
            )
        self.student.load_state_dict(new.state_dict())

    def student_copy(self) -> nn.Module:
        """A detached copy of the current student (to hand over as the next teacher)."""
        return copy.deepcopy(self.student)

    # ----------------------------------------------------------------------------- stages
    def _set_trainable(self, stage: Stage) -> list[nn.Parameter]:
        every = [*self.student.parameters(), *self.modules.parameters()]
        chosen = list(stage.trainable(self.student, self.modules)) if stage.trainable else every
        chosen_ids = {id(p) for p in chosen}
        for p in every:
            p.requires_grad_(id(p) in chosen_ids)
        return chosen

    def fit(self, resume: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run every stage; ``resume`` is a checkpoint dict written by an earlier run of this config.

        The run directory is locked for the whole run (one process trains in it at a time), and a
        fresh run never starts over a directory that already holds one."""
        with RunDirLock(self.run_dir) if self.dist.main else contextlib.nullcontext():
            if resume is None and (self.run_dir / "last.pt").is_file():
                raise KdzooError(
                    f"{self.run_dir} already holds a run (last.pt); continue it with "
                    f"`kdzoo run --resume {self.run_dir}` or choose another run directory"
                )
            return self._fit(resume)

    def _fit(self, resume: dict[str, Any] | None) -> dict[str, Any]:
        if self.dist.main:
            (self.run_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        metrics_path = self.run_dir / "metrics.jsonl"
        start_stage, start_epoch, start_step, global_epoch = 0, 0, 0, 0
        wall_before = 0.0
        if resume is not None:
            self.student.load_state_dict(resume["student"])
            self.modules.load_state_dict(resume["modules"])
            pos = resume["position"]
            start_stage, start_epoch, global_epoch = pos["stage"], pos["epoch"], pos["global_epoch"]
            start_step = pos.get("step", 0)
            self.history = list(resume["history"])
            start_stage, start_epoch = self._grown_last_stage(start_stage, start_epoch)
            self._say_resuming(start_stage, start_epoch, start_step)
            if "teacher_from_run" in resume:
                handed_over = self.student_copy()
                handed_over.load_state_dict(resume["teacher_from_run"])
                self.set_teacher(handed_over)
            self.teacher_metrics = resume.get("teacher_metrics")
            wall_before = resume.get("wall_time_s", 0.0)
            if self.dist.main:
                metrics_path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        elif metrics_path.exists() and self.dist.main:
            metrics_path.unlink()
        started = time.perf_counter()
        if self.teacher is not None and self.teacher_metrics is None:
            self.teacher_metrics = evaluate(
                self.teacher, self.data.val.epoch(0), self.data.num_classes, self._who("teacher")
            )
        self._wall = lambda: wall_before + time.perf_counter() - started
        reporters = [TensorBoardReporter(self.run_dir, global_epoch), PlotReporter()] if self.dist.main else []
        for reporter in reporters:
            self.pm.register(reporter)
        restore_signals = self._catch_stop_signals()
        try:
            return self._run_stages(resume, start_stage, start_epoch, start_step, global_epoch)
        finally:
            restore_signals()
            for reporter in reporters:
                self.pm.unregister(reporter)
            if reporters:
                reporters[0].writer.close()

    def claim_new_run_dir(self) -> None:
        """Move to a new run directory named after ``run_dir`` (``-2``, ``-3``... when taken), created
        atomically by the main process and the same on every process."""
        chosen = [claim_new_run_dir(self.run_dir) if self.dist.main else None]
        if self.dist.enabled:
            torch.distributed.broadcast_object_list(chosen, src=0)
        self.run_dir = chosen[0]

    def _say_resuming(self, stage_index: int, epoch: int, step: int) -> None:
        if not self.dist.main or self.show_progress is False or stage_index >= len(self.stages):
            return
        stage = self.stages[stage_index]
        where = f"stage '{stage.name}' ({stage_index + 1}/{len(self.stages)}), epoch {epoch + 1}/{stage.epochs}"
        tqdm.write(f"{self.label}resuming {self.run_dir} at {where}" + (f", step {step + 1}" if step else ""))

    def _grown_last_stage(self, stage: int, epoch: int) -> tuple[int, int]:
        """A finished run resumed with more ``train.epochs`` re-enters its last stage where it ended."""
        last = len(self.stages) - 1
        if stage <= last:
            return stage, epoch
        done = sum(1 for record in self.history if record["stage_index"] == last)
        return (last, done) if done < self.stages[last].epochs else (stage, epoch)

    def _catch_stop_signals(self):
        """SIGTERM/SIGINT: finish the current step, write a checkpoint, stop with a clear message."""
        self._stop_signal: str | None = None
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def request_stop(signum, _frame):
            self._stop_signal = signal.Signals(signum).name

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        return lambda: [signal.signal(sig, handler) for sig, handler in previous.items()]

    def _run_stages(self, resume, start_stage, start_epoch, start_step, global_epoch) -> dict[str, Any]:
        metrics_path = self.run_dir / "metrics.jsonl"
        call_hook(self.pm, "kdzoo_on_run_start", run=self)
        for stage_index in range(start_stage, len(self.stages)):
            stage = self.stages[stage_index]
            first_epoch = start_epoch if stage_index == start_stage else 0
            first_step = start_step if stage_index == start_stage else 0
            resumed = first_epoch > 0 or first_step > 0
            call_hook(self.pm, "kdzoo_on_stage_start", run=self, stage=stage, index=stage_index, resumed=resumed)
            optimizer, scheduler = self.optimizer_for(stage)
            if resume is not None and stage_index == start_stage and resumed:
                optimizer.load_state_dict(resume["optimizer"])
                scheduler.load_state_dict(resume["scheduler"])
                if resume.get("scaler"):
                    self.scaler.load_state_dict(resume["scaler"])
            if resume is not None and stage_index == start_stage:
                per_rank = resume.get("rng_per_rank")
                checkpoint.restore_rng(per_rank[self.dist.rank] if per_rank else resume["rng"])
            for epoch in range(first_epoch, stage.epochs):
                t0 = time.perf_counter()
                partial = resume.get("partial") if resume is not None and first_step and epoch == first_epoch else None
                train_stats = self._train_epoch(
                    stage,
                    stage_index,
                    epoch,
                    global_epoch,
                    optimizer,
                    scheduler,
                    first_step if epoch == first_epoch else 0,
                    partial,
                )
                val = evaluate(self.student, self.data.val.epoch(0), self.data.num_classes, self._who("student"))
                record = {
                    "stage": stage.name,
                    "stage_index": stage_index,
                    "epoch": epoch + 1,
                    "global_epoch": global_epoch + 1,
                    "train": train_stats,
                    "val": val,
                    "lr": optimizer.param_groups[0]["lr"],
                    "epoch_time_s": round(time.perf_counter() - t0, 3),
                }
                global_epoch += 1
                self.history.append(record)
                done_stage = epoch + 1 == stage.epochs
                position = {
                    "stage": stage_index + 1 if done_stage else stage_index,
                    "epoch": 0 if done_stage else epoch + 1,
                    "global_epoch": global_epoch,
                }
                call_hook(self.pm, "kdzoo_on_epoch_end", run=self, stage=stage, epoch=epoch, metrics=record)
                if done_stage:  # before the checkpoint, so a resumed run sees what the stage handed over
                    call_hook(self.pm, "kdzoo_on_stage_end", run=self, stage=stage, index=stage_index)
                self._save(optimizer, scheduler, position)
                if self.dist.main:
                    append_jsonl(metrics_path, record)
                    self._print(record)
            if stage.epochs == 0:
                call_hook(self.pm, "kdzoo_on_stage_end", run=self, stage=stage, index=stage_index)
            start_epoch = 0
        summary = self._summary(self._wall())
        if self.dist.main:
            self._export()
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        call_hook(self.pm, "kdzoo_on_run_end", run=self, summary=summary)
        return summary

    def optimizer_for(self, stage: Stage):
        """A fresh optimizer and per-step LR schedule over the parameters ``stage`` trains."""
        params = self._set_trainable(stage)
        if self.dist.enabled:  # DDP registers what trains when it is built: once per stage
            self.ddp = wrap(self.student, self.objective, self.dist)
        optim_cfg = self.config.optim if not stage.optim else _with(self.config.optim, stage.optim)
        optimizer = build_optimizer(optim_cfg, params)
        return optimizer, build_scheduler(optim_cfg, optimizer, stage.epochs, len(self.data.train))

    def train_step(
        self, x: Tensor, y: Tensor, stage: Stage, epoch: int, progress: float, optimizer, scheduler, teacher_out=None
    ):
        """One optimisation step; returns (loss, terms, weights) without any host sync."""
        if self.config.train.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            if self.ddp is not None:
                loss, terms, weights = self.ddp(x, y, stage, epoch, progress, teacher_out)
            else:
                loss, terms, weights = self.compute_losses(x, y, stage, epoch, progress, teacher_out)
        if self.config.train.nonfinite == "skip" and not bool(torch.isfinite(loss)):  # a host sync, this policy only
            optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            return None, terms, weights
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
        scheduler.step()
        return loss, terms, weights

    def _autocast(self):
        precision = self.config.train.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _train_epoch(
        self, stage, stage_index, epoch, global_epoch, optimizer, scheduler, start_step=0, partial=None
    ) -> dict[str, float]:
        self.student.train()
        self.modules.train()
        steps = len(self.data.train)
        sums: dict[str, Tensor] = {k: torch.tensor(v) for k, v in (partial or {}).get("sums", {}).items()}
        seen = (partial or {}).get("seen", 0)
        seen_before = seen  # images of this epoch trained before a resume: not part of this process's rate
        self.skipped_steps = (partial or {}).get("skipped", 0)
        first_bad: dict[str, Tensor] = {}  # term -> first step where it was NaN/inf, tracked on the device
        weights: dict[str, float] = {}
        cache = self.teacher_cache
        data = self.data.train
        batches = (
            data.epoch(global_epoch, start_step, with_index=True) if cache else data.epoch(global_epoch, start_step)
        )
        bar = tqdm(
            batches,
            total=steps,
            initial=start_step,
            leave=False,
            disable=self._quiet(),
            desc=f"{self.label}{stage.name} {epoch + 1}/{stage.epochs}",
        )
        t0 = time.perf_counter()
        every = self.config.train.checkpoint_every
        for step, (x, y, *index) in enumerate(bar, start=start_step):
            progress = (epoch + step / steps) / max(stage.epochs, 1)
            teacher_out = cache.lookup(index[0], global_epoch, self.device) if cache is not None else None
            loss, terms, weights = self.train_step(x, y, stage, epoch, progress, optimizer, scheduler, teacher_out)
            if loss is not None:
                seen += len(y)
                for name, value in {"loss": loss, **terms}.items():
                    value = value.detach()
                    sums[name] = sums.get(name, 0.0) + value
                    bad = first_bad.get(name, torch.tensor(-1))
                    first_bad[name] = torch.where((bad < 0) & ~torch.isfinite(value), step + 1, bad)
            done = step + 1
            if done % self.config.train.log_every == 0 or done == steps:  # the only host syncs
                self._stop_if_nonfinite(first_bad, stage, epoch)
                shown = {k: f"{(v / max(done - start_step, 1)).item():.3f}" for k, v in sums.items()}
                if self.dist.enabled:
                    shown = {}  # rank 0 shows throughput only; terms are averaged over ranks at epoch end
                shown["img/s"] = f"{(seen - seen_before) / max(time.perf_counter() - t0, 1e-9):.0f}"
                bar.set_postfix(shown)
            stop = any_across(self._stop_signal is not None, self.dist)  # every rank stops at the same step
            if (stop or (every and done % every == 0)) and done < steps:
                self._stop_if_nonfinite(first_bad, stage, epoch)
                position = {"stage": stage_index, "epoch": epoch, "step": done, "global_epoch": global_epoch}
                partial = {"sums": {k: float(v) for k, v in sums.items()}, "seen": seen, "skipped": self.skipped_steps}
                self._save(optimizer, scheduler, position, partial)
            if stop:
                raise KdzooError(
                    f"stopped by {self._stop_signal} at stage '{stage.name}' epoch {epoch + 1} step {done}/{steps}; "
                    f"checkpoint written: continue with `kdzoo run --resume {self.run_dir}`"
                )
        self._stop_if_nonfinite(first_bad, stage, epoch)
        counted = max(steps - self.skipped_steps, 1)
        stats = {k: round(float(v) / counted, 6) for k, v in mean_across(sums, self.dist).items()}
        stats["weights"] = weights
        stats["images_per_s"] = round(self.dist.world * (seen - seen_before) / max(time.perf_counter() - t0, 1e-9), 1)
        if self.skipped_steps:
            stats["skipped_steps"] = self.skipped_steps
        return stats

    def _stop_if_nonfinite(self, first_bad: dict[str, Tensor], stage: Stage, epoch: int) -> None:
        bad = {name: int(step) for name, step in first_bad.items() if int(step) > 0}
        if not any_across(bool(bad), self.dist):
            return
        bad = bad or {"loss (on another process)": 0}
        step = min(bad.values())
        terms = sorted(n for n, s in bad.items() if s == step and n != "loss") or ["loss"]
        last = self.run_dir / "last.pt"
        kept = f"the last good checkpoint is kept ({last})" if last.is_file() else "no checkpoint was written yet"
        raise KdzooError(
            f"stage '{stage.name}' epoch {epoch + 1} step {step}: loss term {', '.join(map(repr, terms))} "
            f"became NaN/inf; {kept}; lower optim.lr or the term's weight, or set train.nonfinite=skip"
        )

    def _save(self, optimizer, scheduler, position, partial=None) -> None:
        rngs = None
        if self.dist.enabled:  # every process's RNG state, so each resumes its own stream
            rngs = [None] * self.dist.world
            torch.distributed.all_gather_object(rngs, checkpoint.rng_state())
        if not self.dist.main:
            return
        checkpoint.save_atomic(
            {
                "format": checkpoint.RUN_FORMAT,
                "config": self.config.to_dict(),
                "student": self.student.state_dict(),
                "modules": self.modules.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "position": position,
                "rng": checkpoint.rng_state(),
                "history": self.history,
                "teacher_metrics": self.teacher_metrics,
                "wall_time_s": self._wall(),
                **({"partial": partial} if partial else {}),
                **({"rng_per_rank": rngs} if rngs else {}),
                **({"teacher_from_run": self.teacher.state_dict()} if self.teacher_from_run else {}),
            },
            self.run_dir / "last.pt",
        )

    def _export(self) -> None:
        """The student alone (no method modules) as a timm-loadable safetensors file + how to load it."""
        from safetensors.torch import save

        state = {k: v.detach().cpu().contiguous() for k, v in self.student.state_dict().items()}
        # written as bytes through open(): the file gets the same permissions as the run's other files
        (self.run_dir / "student.safetensors").write_bytes(save(state, metadata={"format": "pt"}))
        kwargs = {"num_classes": self.data.num_classes, "in_chans": self.data.in_chans, **self.config.student.kwargs}
        (self.run_dir / "student.json").write_text(
            json.dumps(
                {
                    "model": self.config.student.model,
                    "kwargs": kwargs,
                    "load": (
                        f"timm.create_model({self.config.student.model!r}, pretrained=True, "
                        + "".join(f"{k}={v!r}, " for k, v in kwargs.items())
                        + "pretrained_cfg_overlay=dict(file='student.safetensors', "
                        + f"num_classes={kwargs['num_classes']}))"
                    ),
                },
                indent=2,
            )
        )

    def _summary(self, wall: float) -> dict[str, Any]:
        last = (
            self.history[-1]["val"]
            if self.history
            else evaluate(self.student, self.data.val.epoch(0), self.data.num_classes, self._who("student"))
        )
        best = max((r["val"]["top1"] for r in self.history), default=last["top1"])
        return {
            "methods": self.config.methods,
            "teacher": self._teacher_name(),
            "student": self.config.student.model,
            "data": self.data.name,
            "teacher_top1": None if self.teacher_metrics is None else self.teacher_metrics["top1"],
            "student_top1": last["top1"],
            "student_best_top1": best,
            "epochs": len(self.history),
            "stages": [
                {"name": stage.name, "top1": records[-1]["val"]["top1"]}
                for i, stage in enumerate(self.stages)
                if (records := [r for r in self.history if r["stage_index"] == i])
            ],
            "wall_time_s": round(wall, 2),
            "run_dir": str(self.run_dir),
        }

    def _who(self, role: str) -> str:
        return f"{role} ({getattr(self.config, role).model})"

    def _teacher_name(self) -> str | None:
        if self.teacher_cache is not None:
            return f"{self.config.teacher.model} (cached outputs)"
        if self.teacher is None:
            return None
        if self.teacher_from_run:
            return f"{self.config.student.model} (previous generation)"
        return self.config.teacher.model

    def _quiet(self) -> bool | None:
        return None if self.show_progress is None else not self.show_progress

    def _print(self, record: dict[str, Any]) -> None:
        if self.show_progress is False:
            return
        terms = " ".join(
            f"{k}={v:.4f}" for k, v in record["train"].items() if isinstance(v, float) and k != "images_per_s"
        )
        tqdm.write(
            f"[{self.label}{record['stage']} {record['epoch']}] {terms} val_top1={record['val']['top1']:.2f} "
            f"({record['train']['images_per_s']:.0f} img/s)"
        )


def _with(base, overrides: dict[str, Any]):
    return build(type(base), {**as_dict(base), **overrides}, "stage.optim")
