"""The training loop: stages, epochs, steps, checkpoints and evaluation, read top to bottom.

Per step the loop hands a :class:`~kdzoo.api.Batch` and its :class:`~kdzoo.api.When` to the run's
:class:`~kdzoo.engine.step.Step`, which owns the update (the objective's loss, backward, optimizer,
schedule, precision, processes) and returns a :class:`~kdzoo.api.StepResult`. Around the steps the
loop runs the stages the methods scheduled, evaluates, checkpoints and reports, and calls the
lifecycle hooks with itself as the ``run`` (:class:`kdzoo.Run`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from kdzoo import checkpoint
from kdzoo.api import Batch, KdzooError, ModelInfo, Stage, When
from kdzoo.data.mixing import BatchMixing
from kdzoo.engine.distributed import any_across, broadcast_from_main
from kdzoo.engine.evaluate import evaluate_across
from kdzoo.engine.export import best_epoch, deployed_costs, export_student, summarise
from kdzoo.engine.extract import describe
from kdzoo.engine.locking import RunDirLock, claim_new_run_dir
from kdzoo.engine.parts import RunParts
from kdzoo.engine.signals import StopRequests
from kdzoo.engine.state import Position, RunClock, RunState
from kdzoo.engine.step import CompiledBackwardFailed, EpochTotals, Step
from kdzoo.errors import RunStopped
from kdzoo.models import create_model
from kdzoo.reporting import ConsoleReporter, MetricsFileReporter, PlotReporter
from kdzoo.reporting.records import AssistantResult, EpochRecord, RunSummary


class Trainer:
    """Runs one distillation run built by :func:`kdzoo.engine.build.build_run` (its ``parts``).

    It owns the loop: stages, epochs and steps, a checkpoint after every epoch (and every
    ``train.checkpoint_every`` steps), evaluation, the lifecycle hooks, and the student's export at
    the end. It is the ``run`` the hooks receive (:class:`kdzoo.Run`).
    """

    def __init__(self, parts: RunParts, run_dir: str | Path):
        self.parts = parts
        self.step: Step = parts.step
        self.config, self.data, self.stages = parts.config, parts.data, parts.stages
        self.run_dir = Path(run_dir)
        self.history: list[dict[str, Any]] = []
        self.stop = StopRequests()
        data, train = self.config.data, self.config.train
        self.mixing = (
            BatchMixing(
                mixup=data.mixup,
                cutmix=data.cutmix,
                prob=data.mix_prob,
                switch_prob=data.mix_switch_prob,
                smoothing=train.label_smoothing,
                num_classes=self.data.num_classes,
                seed=train.seed,
            )
            if data.mixing
            else None
        )

    # ------------------------------------------------------------------ the run, as hooks see it
    dist = property(lambda self: self.parts.dist)
    device = property(lambda self: self.parts.device)
    objective = property(lambda self: self.step.objective)
    hooks = property(lambda self: self.objective.hooks)
    pm = property(lambda self: self.objective.hooks)  # 0.1.0's name: observers register on it
    student = property(lambda self: self.step.student)
    modules = property(lambda self: self.step.modules)
    teacher = property(lambda self: self.objective.teacher)
    teacher_info = property(lambda self: self.objective.teacher_info)
    student_info = property(lambda self: self.objective.student_info)
    teacher_cache = property(lambda self: self.objective.teacher_side.cache)

    @property
    def teacher_metrics(self) -> dict[str, float] | None:
        return self.objective.teacher_side.metrics

    @teacher_metrics.setter
    def teacher_metrics(self, value: dict[str, float] | None) -> None:
        self.objective.teacher_side.metrics = value

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
        info: ModelInfo = describe(model, self.config.student.model, self.config.data.img_size)
        self.objective.set_teacher(model, info, by_method=name)
        self.teacher_metrics = self._evaluate(model, "teacher", name)

    def claim_new_run_dir(self) -> None:
        """Move to a new run directory named after ``run_dir`` (``-2``, ``-3``... when taken), created
        atomically by the main process and the same on every process."""
        chosen = str(claim_new_run_dir(self.run_dir)) if self.dist.main else None
        self.run_dir = Path(broadcast_from_main(chosen, self.dist))  # the main process's choice, on every process

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: RunState | None = None) -> dict[str, Any]:
        """Run every stage, from the start or from ``resume`` (a checkpoint of this run). The run
        directory is locked meanwhile, and a fresh run never starts over one holding a run."""
        with RunDirLock(self.run_dir) if self.dist.main else contextlib.nullcontext():
            if resume is None and (self.run_dir / "last.pt").is_file():
                raise KdzooError(
                    f"{self.run_dir} already holds a run (last.pt); continue it with "
                    f"`kdzoo run --resume {self.run_dir}` or choose another run directory"
                )
            if self.dist.main:
                recorded = {**self.config.to_dict(), "method_sources": self.parts.method_sources}
                checkpoint.write_text_atomic(json.dumps(recorded, indent=2), self.run_dir / "config.json")
            at = self._restore(resume) if resume is not None else Position()
            if self.teacher is not None and self.teacher_metrics is None:
                # on the validation set as the teacher's own transform makes it (kdzoo.data.inputs)
                self.teacher_metrics = self._evaluate(self.teacher, "teacher", batches=self.data.teacher_val_batches)
            self._clock = RunClock(resume.wall_time_s, resume.cpu_time_s) if resume is not None else RunClock()
            with self._reporters(at.global_epoch), self.stop:
                try:
                    return self._run(at, resume)
                except CompiledBackwardFailed as exc:
                    raise KdzooError(self._without_compiling(exc)) from exc

    def _run(self, at: Position, resume: RunState | None) -> dict[str, Any]:
        self.hooks.call("kdzoo_on_run_start", run=self)
        global_epoch = at.global_epoch
        for index in range(at.stage, len(self.stages)):
            stage = self.stages[index]
            first_epoch, first_step = (at.epoch, at.step) if index == at.stage else (0, 0)
            resumed = first_epoch > 0 or first_step > 0
            self.hooks.call("kdzoo_on_stage_start", run=self, stage=stage, index=index, resumed=resumed)
            self.step.begin(stage)
            if resume is not None and index == at.stage:
                if resumed:
                    self.step.load_state_dict(resume.optimizer, resume.scheduler, resume.scaler)
                checkpoint.restore_rng(resume.rng_of(self.dist.rank))
            for epoch in range(first_epoch, stage.epochs):
                started = time.perf_counter()
                partial = (
                    resume.partial_of(self.dist.rank)
                    if resume is not None and first_step and epoch == first_epoch
                    else None
                )
                step = first_step if epoch == first_epoch else 0
                train = self._train_epoch(stage, index, epoch, global_epoch, step, partial)
                record = EpochRecord(
                    stage=stage.name,
                    stage_index=index,
                    epoch=epoch + 1,
                    global_epoch=global_epoch + 1,
                    global_step=(global_epoch + 1) * len(self.data.train),
                    train=train,
                    val=self._evaluate(self.objective.deployed_model(), "student"),
                    val_ema=self._evaluate_ema(),
                    lr=self.step.optimizer.param_groups[0]["lr"],
                    epoch_time_s=round(time.perf_counter() - started, 3),
                ).to_json()  # hooks and run.history see the record as the metrics file holds it
                global_epoch += 1
                self.history.append(record)
                self._keep_if_best()
                self.hooks.call("kdzoo_on_epoch_end", run=self, stage=stage, epoch=epoch, metrics=record)
                done = epoch + 1 == stage.epochs
                if done:  # before the checkpoint, so a resumed run sees what the stage handed over
                    self.hooks.call("kdzoo_on_stage_end", run=self, stage=stage, index=index)
                following = (
                    Position(index + 1, 0, 0, global_epoch) if done else Position(index, epoch + 1, 0, global_epoch)
                )
                self._save(following)
            if stage.epochs == 0:
                self.hooks.call("kdzoo_on_stage_end", run=self, stage=stage, index=index)
        summary = self._summary().to_json()
        if self.dist.main:
            self._export("last")
            if self.step.ema is not None:
                with self._ema_weights():
                    self._export("ema")
            checkpoint.write_text_atomic(json.dumps(summary, indent=2), self.run_dir / "summary.json")
        self.hooks.call("kdzoo_on_run_end", run=self, summary=summary)
        return summary

    def _train_epoch(self, stage: Stage, index: int, epoch: int, global_epoch: int, start_step: int, partial) -> dict:
        self.student.train()
        self.modules.train()
        steps, totals = len(self.data.train), EpochTotals(partial)
        view = self.data.train.view_of(global_epoch)  # for a teacher-output cache of fixed views
        batches = self.data.train.epoch(global_epoch, start_step, with_index=True)
        desc = f"{self.parts.label}{stage.name} {epoch + 1}/{stage.epochs}"
        bar = tqdm(batches, total=steps, initial=start_step, leave=False, disable=self._quiet(), desc=desc)
        started, weights, every = time.perf_counter(), {}, self.config.train.checkpoint_every
        for step, (x, y, idx) in enumerate(bar, start=start_step):
            when = When(stage, epoch, (epoch + step / steps) / max(stage.epochs, 1))
            batch = Batch(x, y, idx, view=view)
            if self.mixing is not None:  # drawn from (seed, epoch, step): the same after a resume, on every process
                mixed = self.mixing(x, y, global_epoch, step)
                batch = Batch(mixed.inputs, mixed.labels, idx, view=view, soft_targets=mixed.soft_targets)
            result = self.step(batch, when)
            weights = result.weights
            totals.add(step, result.loss, result.terms, len(y))
            done = step + 1
            if done % self.config.train.log_every == 0 or done == steps:  # the only host syncs
                totals.stop_if_nonfinite(stage, epoch, self.run_dir, self.dist)
                # under torchrun rank 0 shows throughput only; terms are averaged over ranks at epoch end
                shown = {} if self.dist.enabled else totals.running_means(done - start_step)
                bar.set_postfix({**shown, "img/s": f"{totals.rate(time.perf_counter() - started):.0f}"})
                self.hooks.call(
                    "kdzoo_on_train_log",
                    run=self,
                    stage=stage,
                    epoch=epoch,
                    step=done,
                    global_step=global_epoch * steps + done,
                    values=totals.means_since_log(self.dist),
                    weights=weights,
                    lr=self.step.optimizer.param_groups[0]["lr"],
                )
            stop = self.stop.signal is not None
            if self.dist.enabled:  # every rank stops at the same step (one process has no one to ask)
                stop = any_across(stop, self.dist)
            if (stop or (every and done % every == 0)) and done < steps:
                totals.stop_if_nonfinite(stage, epoch, self.run_dir, self.dist)
                self._save(Position(index, epoch, done, global_epoch), totals.partial())
            if stop:
                raise RunStopped(
                    f"stopped by {self.stop.signal} at stage '{stage.name}' epoch {epoch + 1} step {done}/{steps}; "
                    f"checkpoint written: continue with `kdzoo run --resume {self.run_dir}`"
                )
        totals.stop_if_nonfinite(stage, epoch, self.run_dir, self.dist)
        stats: dict[str, Any] = {**totals.means(steps, self.dist), "weights": weights}
        stats["images_per_s"] = round(self.dist.world * totals.rate(time.perf_counter() - started), 1)
        if totals.skipped:
            stats["skipped_steps"] = totals.skipped
        return stats

    # ------------------------------------------------------------------ checkpoints
    def _save(self, position: Position, partial: dict | None = None) -> None:
        rngs: list[dict[str, Any]] | None = None
        partials: list[dict[str, Any] | None] | None = None
        if self.dist.enabled:  # every process's RNG state and epoch totals: each resumes its own
            gathered: list[Any] = [None] * self.dist.world
            torch.distributed.all_gather_object(gathered, (checkpoint.rng_state(), partial))
            rngs, partials = [rng for rng, _ in gathered], [totals for _, totals in gathered]
        if not self.dist.main:
            return
        RunState(
            config=self.config.to_dict(),
            student=self.student.state_dict(),
            modules=self.modules.state_dict(),
            **self.step.state_dict(),
            position=position,
            rng=checkpoint.rng_state(),
            history=self.history,
            teacher_metrics=self.teacher_metrics,
            wall_time_s=self._clock.wall(),
            partial=partial,
            rng_per_rank=rngs,
            partial_per_rank=partials if partial is not None else None,
            method_teacher=self.objective.teacher_side.state(),
            cpu_time_s=self._clock.cpu(),
            ema=self.step.ema_state(),
        ).save(self.run_dir / "last.pt")

    def _restore(self, state: RunState) -> Position:
        """Load a checkpoint's weights and history; where to go on from (a finished run resumed with
        more ``train.epochs`` re-enters its last stage where it ended)."""
        self.student.load_state_dict(state.student)
        self.modules.load_state_dict(state.modules)
        self.step.load_ema_state(state.ema)
        self.history = list(state.history)
        if state.method_teacher is not None:
            handed_over = self.student_copy()
            handed_over.load_state_dict(state.method_teacher["state"])
            self.set_teacher(handed_over, state.method_teacher["name"])
        self.teacher_metrics = state.teacher_metrics
        at = dataclasses.replace(state.position)
        last = len(self.stages) - 1
        done = sum(1 for record in self.history if record["stage_index"] == last)
        if at.stage > last and done < self.stages[last].epochs:
            at.stage, at.epoch = last, done
        if self.dist.main and self.parts.show_progress is not False and at.stage <= last:
            stage = self.stages[at.stage]
            where = f"stage '{stage.name}' ({at.stage + 1}/{len(self.stages)}), epoch {at.epoch + 1}/{stage.epochs}"
            label = self.parts.label
            tqdm.write(f"{label}resuming {self.run_dir} at {where}" + (f", step {at.step + 1}" if at.step else ""))
        return at

    def _without_compiling(self, failed: CompiledBackwardFailed) -> str:
        """A compiled step's backward pass failed: how to go on without compiling."""
        off = " ".join(f"--set train.{key}=false" for key in failed.settings)
        how = f"run it again with {off} (no checkpoint was written yet)"
        if (self.run_dir / "last.pt").is_file():
            how = f"go on from the last checkpoint without it: kdzoo run --resume {self.run_dir} {off}"
        return (
            f"the backward pass of the compiled step failed ({failed.reason}); {how}, "
            f"or pick another train.compile_backend"
        )

    # ------------------------------------------------------------------ the best epoch, the EMA
    def _export(self, which: str) -> None:
        deployed = self.objective.deployed_model()
        config, data = self.config, self.data
        inputs = data.inputs.student.as_record() if data.inputs is not None else None
        export_student(
            deployed, config, data.num_classes, data.in_chans, self.run_dir, self.objective.deploying, which, inputs
        )

    def _keep_if_best(self) -> None:
        """``student_best.safetensors``: the deployed network at the epoch of the best validation top-1
        so far (selected on ``data.val``, the set every epoch is scored on)."""
        if self.dist.main and best_epoch(self.history) == self.history[-1]["global_epoch"]:
            self._export("best")

    def _evaluate_ema(self) -> dict[str, float] | None:
        if self.step.ema is None:
            return None
        with self._ema_weights():
            return self._evaluate(self.objective.deployed_model(), "student", "EMA")

    @contextlib.contextmanager
    def _ema_weights(self):
        """The student holds the EMA's weights meanwhile (what a method deploys around it shares them)."""
        assert self.step.ema is not None
        own = {k: v.clone() for k, v in self.student.state_dict().items()}
        self.student.load_state_dict(self.step.ema.module.state_dict())
        try:
            yield
        finally:
            self.student.load_state_dict(own)

    # ------------------------------------------------------------------ helpers
    @contextlib.contextmanager
    def _reporters(self, first_epoch: int):
        """The metrics file, console lines, plots and the trackers train.loggers chooses: on the main process only."""
        if not self.dist.main:
            yield
            return
        reporters: list[object] = [MetricsFileReporter(self.run_dir), PlotReporter()]
        if self.parts.show_progress is not False:
            reporters.append(ConsoleReporter(self.parts.label))
        trackers: list[object] = []
        try:
            # the trackers after the plots, which they may upload, and the metrics file they mirror; made
            # inside the try: one that fails to start still gets those made before it closed
            for info in self.parts.loggers:
                trackers.append(info.factory(self.run_dir, first_epoch))
            for reporter in [*reporters, *trackers]:
                self.hooks.register(reporter)
            yield
        finally:
            for reporter in [*reporters, *trackers]:
                self.hooks.unregister(reporter)
            for tracker in trackers:
                close = getattr(tracker, "close", None)
                if callable(close):
                    close()

    def _summary(self) -> RunSummary:
        deployed = self.objective.deployed_model()
        last = self.history[-1]["val"] if self.history else self._evaluate(deployed, "student")
        side = self.objective.teacher_side
        learned_from = self.config.taught_by()  # the teacher, its last assistant, or several teachers
        teacher = {
            None: None,
            "model": learned_from,
            "cached outputs": f"{learned_from} (cached outputs)",
            "method": f"{self.config.student.model} ({side.method_name})",
        }[side.source]
        return summarise(
            config=self.config,
            history=self.history,
            stage_names=[stage.name for stage in self.stages],
            last_val=last,
            teacher=teacher,
            teacher_source=side.source,
            teacher_metrics=self.teacher_metrics,
            data_name=self.data.name,
            clock=self._clock,
            run_dir=self.run_dir,
            deployed=deployed_costs(deployed, self.data.in_chans, self.config.data.img_size, self.objective.deploying),
            teacher_cache_cpu_s=side.cache.fill_cpu_s() if side.cache is not None else None,
            method_sources=self.parts.method_sources,
            ema_val=self.history[-1].get("val_ema") if self.history else None,
            assistants=self._assistants(),
        )

    def _assistants(self) -> list[AssistantResult]:
        """The teacher-assistant chain the student learned through: each link's model, top-1 and folder."""
        if not self.parts.assistant_runs:  # no chain, or no teacher used
            return []
        links = []
        for assistant, folder in zip(self.config.teacher.assistants, self.parts.assistant_runs, strict=True):
            if folder is None:  # given by its weights file
                links.append(AssistantResult(model=assistant.model))
                continue
            top1 = RunSummary.read(folder / "summary.json").student_top1
            links.append(AssistantResult(model=assistant.model, top1=top1, run_dir=str(folder)))
        return links

    def _evaluate(self, model: nn.Module, role: str, name: str | None = None, batches=None) -> dict[str, float]:
        who = f"{role} ({name or (self.config.taught_by() if role == 'teacher' else self.config.student.model)})"
        # each process scores its share of the set; the counts are summed over the processes
        return evaluate_across(model, batches or self.data.val, self.data.num_classes, self.dist, who)

    def _quiet(self) -> bool | None:
        show = self.parts.show_progress
        return None if show is None else not show
