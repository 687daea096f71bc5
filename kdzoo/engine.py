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
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from kdzoo import checkpoint
from kdzoo.config import RunConfig
from kdzoo.data import DataBundle, load_data
from kdzoo.errors import KdzooError
from kdzoo.features import FeatureExtractor, ModelInfo, describe
from kdzoo.metrics import append_jsonl, evaluate
from kdzoo.models import check_label_sets, check_pair, create_model
from kdzoo.objective import Objective
from kdzoo.optim import build_optimizer, build_scheduler
from kdzoo.plugins import Registry
from kdzoo.reporting import PlotReporter, TensorBoardReporter
from kdzoo.schedule import Stage
from kdzoo.teacher_cache import TeacherOutputCache, check_cacheable, data_settings, file_digest
from kdzoo.typed import as_dict, build


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
    ):
        self.config, self.run_dir = config, Path(run_dir)
        self.show_progress, self.label = show_progress, label
        checkpoint.seed_everything(config.train.seed)
        self.device = pick_device(config.train.device)
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
        if config.train.compile:
            self.objective.compile()
        self.history: list[dict[str, Any]] = []

    def _obtain_teacher(self) -> nn.Module:
        from kdzoo.teacher import obtain_teacher

        rng = checkpoint.rng_state()  # a cached or freshly trained teacher must not shift this run's RNG
        teacher = obtain_teacher(self.config, self.data, self.registry, self.show_progress)
        checkpoint.restore_rng(rng)
        return teacher

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
        cache = self.teacher_cache
        if not cache.select(self.objective.taps):
            teacher = teacher or self._obtain_teacher()
            teacher.requires_grad_(False).eval().to(self.device)
            taps = self.objective.taps
            cache.fill(
                FeatureExtractor(teacher, info, taps.teacher, taps.teacher_embedding),
                self.config.data.eval_batch_size,
                self.device,
            )
            cache.remember(info, evaluate(teacher, self.data.val.epoch(0), self.data.num_classes))
            cache.select(taps)
        self.teacher_metrics = cache.teacher_metrics()
        if self.show_progress is not False:
            tqdm.write(cache.describe())

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
        self.teacher_metrics = evaluate(model, self.data.val.epoch(0), self.data.num_classes)

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
        """Run every stage; ``resume`` is a checkpoint dict written by an earlier run of this config."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        metrics_path = self.run_dir / "metrics.jsonl"
        start_stage, start_epoch, global_epoch = 0, 0, 0
        wall_before = 0.0
        if resume is not None:
            self.student.load_state_dict(resume["student"])
            self.modules.load_state_dict(resume["modules"])
            pos = resume["position"]
            start_stage, start_epoch, global_epoch = pos["stage"], pos["epoch"], pos["global_epoch"]
            self.history = list(resume["history"])
            if "teacher_from_run" in resume:
                handed_over = self.student_copy()
                handed_over.load_state_dict(resume["teacher_from_run"])
                self.set_teacher(handed_over)
            self.teacher_metrics = resume.get("teacher_metrics")
            wall_before = resume.get("wall_time_s", 0.0)
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        elif metrics_path.exists():
            metrics_path.unlink()
        started = time.perf_counter()
        if self.teacher is not None and self.teacher_metrics is None:
            self.teacher_metrics = evaluate(self.teacher, self.data.val.epoch(0), self.data.num_classes)
        reporters = [TensorBoardReporter(self.run_dir, global_epoch), PlotReporter()]
        for reporter in reporters:
            self.pm.register(reporter)
        try:
            return self._run_stages(resume, start_stage, start_epoch, global_epoch, wall_before, started)
        finally:
            for reporter in reporters:
                self.pm.unregister(reporter)
            reporters[0].writer.close()

    def _run_stages(self, resume, start_stage, start_epoch, global_epoch, wall_before, started) -> dict[str, Any]:
        metrics_path = self.run_dir / "metrics.jsonl"
        self.pm.hook.kdzoo_on_run_start(run=self)
        for stage_index in range(start_stage, len(self.stages)):
            stage = self.stages[stage_index]
            first_epoch = start_epoch if stage_index == start_stage else 0
            self.pm.hook.kdzoo_on_stage_start(run=self, stage=stage, index=stage_index, resumed=first_epoch > 0)
            optimizer, scheduler = self.optimizer_for(stage)
            if resume is not None and stage_index == start_stage and first_epoch > 0:
                optimizer.load_state_dict(resume["optimizer"])
                scheduler.load_state_dict(resume["scheduler"])
            if resume is not None and stage_index == start_stage:
                checkpoint.restore_rng(resume["rng"])
            for epoch in range(first_epoch, stage.epochs):
                t0 = time.perf_counter()
                train_stats = self._train_epoch(stage, stage_index, epoch, global_epoch, optimizer, scheduler)
                val = evaluate(self.student, self.data.val.epoch(0), self.data.num_classes)
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
                self.pm.hook.kdzoo_on_epoch_end(run=self, stage=stage, epoch=epoch, metrics=record)
                if done_stage:  # before the checkpoint, so a resumed run sees what the stage handed over
                    self.pm.hook.kdzoo_on_stage_end(run=self, stage=stage, index=stage_index)
                self._save(optimizer, scheduler, position, wall_before + time.perf_counter() - started)
                append_jsonl(metrics_path, record)
                self._print(record)
            if stage.epochs == 0:
                self.pm.hook.kdzoo_on_stage_end(run=self, stage=stage, index=stage_index)
            start_epoch = 0
        self._export()
        summary = self._summary(wall_before + time.perf_counter() - started)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.pm.hook.kdzoo_on_run_end(run=self, summary=summary)
        return summary

    def optimizer_for(self, stage: Stage):
        """A fresh optimizer and per-step LR schedule over the parameters ``stage`` trains."""
        params = self._set_trainable(stage)
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
            loss, terms, weights = self.compute_losses(x, y, stage, epoch, progress, teacher_out)
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

    def _train_epoch(self, stage, stage_index, epoch, global_epoch, optimizer, scheduler) -> dict[str, float]:
        self.student.train()
        self.modules.train()
        steps = len(self.data.train)
        sums: dict[str, Tensor] = {}
        weights: dict[str, float] = {}
        cache = self.teacher_cache
        batches = self.data.train.epoch(global_epoch, with_index=True) if cache else self.data.train.epoch(global_epoch)
        bar = tqdm(
            batches,
            total=steps,
            leave=False,
            disable=self._quiet(),
            desc=f"{self.label}{stage.name} {epoch + 1}/{stage.epochs}",
        )
        seen = 0
        t0 = time.perf_counter()
        for step, (x, y, *index) in enumerate(bar):
            progress = (epoch + step / steps) / max(stage.epochs, 1)
            teacher_out = cache.lookup(index[0], global_epoch, self.device) if cache is not None else None
            loss, terms, weights = self.train_step(x, y, stage, epoch, progress, optimizer, scheduler, teacher_out)
            seen += len(y)
            for name, value in {"loss": loss, **terms}.items():
                sums[name] = sums.get(name, 0.0) + value.detach()
            if (step + 1) % self.config.train.log_every == 0:  # the only host syncs: at the log interval
                shown = {k: f"{(v / (step + 1)).item():.3f}" for k, v in sums.items()}
                shown["img/s"] = f"{seen / max(time.perf_counter() - t0, 1e-9):.0f}"
                bar.set_postfix(shown)
        bad = [name for name, value in sums.items() if name != "loss" and not math.isfinite(float(value))]
        if bad:  # checked once per epoch (no per-step sync); this epoch is not checkpointed
            raise KdzooError(
                f"stage '{stage.name}' epoch {epoch + 1}: loss term(s) {', '.join(bad)} became NaN/inf; "
                f"lower optim.lr or the term's weight (last good checkpoint: {self.run_dir / 'last.pt'})"
            )
        stats = {k: round(float(v) / steps, 6) for k, v in sums.items()}
        stats["weights"] = weights
        stats["images_per_s"] = round(seen / max(time.perf_counter() - t0, 1e-9), 1)
        return stats

    def _save(self, optimizer, scheduler, position, wall) -> None:
        checkpoint.save_atomic(
            {
                "format": "kdzoo-checkpoint-1",
                "config": self.config.to_dict(),
                "student": self.student.state_dict(),
                "modules": self.modules.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "position": position,
                "rng": checkpoint.rng_state(),
                "history": self.history,
                "teacher_metrics": self.teacher_metrics,
                "wall_time_s": wall,
                **({"teacher_from_run": self.teacher.state_dict()} if self.teacher_from_run else {}),
            },
            self.run_dir / "last.pt",
        )

    def _export(self) -> None:
        """The student alone (no method modules) as a timm-loadable safetensors file + how to load it."""
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.student.state_dict().items()}
        save_file(state, str(self.run_dir / "student.safetensors"), metadata={"format": "pt"})
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
            else evaluate(self.student, self.data.val.epoch(0), self.data.num_classes)
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
