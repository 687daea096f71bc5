"""The training loop: stages, epochs, steps, checkpoints and evaluation, read top to bottom.

Per step the teacher runs once under ``inference_mode`` and the student once (when a term first
reads its outputs; not at all in a stage whose terms never do), each exposing the union of the taps
the active methods declared; the objective adds ``ce`` and every method's
unweighted terms, weighted by their own hook; the stage says which terms are on and what trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from kdzoo import checkpoint
from kdzoo.api import KdzooError
from kdzoo.engine.accounting import EpochTotals
from kdzoo.engine.distributed import any_across
from kdzoo.engine.export import deployed_costs, export_student, summarise
from kdzoo.engine.locking import RunDirLock
from kdzoo.engine.run import RunBase
from kdzoo.engine.state import Position, RunClock, RunState
from kdzoo.errors import RunStopped
from kdzoo.registry import call_hook
from kdzoo.reporting import ConsoleReporter, MetricsFileReporter, PlotReporter, TensorBoardReporter


class Trainer(RunBase):
    """Runs one distillation run built by :func:`kdzoo.engine.build.build_run`.

    It owns the loop: stages, epochs and steps, a checkpoint after every epoch (and every
    ``train.checkpoint_every`` steps), evaluation, the lifecycle hooks, and the student's export at
    the end. It is the ``run`` the hooks receive (:class:`kdzoo.Run`).
    """

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
                checkpoint.write_text_atomic(json.dumps(self.config.to_dict(), indent=2), self.run_dir / "config.json")
            at = self._restore(resume) if resume is not None else Position()
            if self.teacher is not None and self.teacher_metrics is None:
                self.teacher_metrics = self._evaluate(self.teacher, "teacher")
            self._clock = RunClock(resume.wall_time_s, resume.cpu_time_s) if resume is not None else RunClock()
            with self._reporters(at.global_epoch), self.stop:
                return self._run(at, resume)

    def _run(self, at: Position, resume: RunState | None) -> dict[str, Any]:
        call_hook(self.pm, "kdzoo_on_run_start", run=self)
        global_epoch = at.global_epoch
        for index in range(at.stage, len(self.stages)):
            stage = self.stages[index]
            first_epoch, first_step = (at.epoch, at.step) if index == at.stage else (0, 0)
            resumed = first_epoch > 0 or first_step > 0
            call_hook(self.pm, "kdzoo_on_stage_start", run=self, stage=stage, index=index, resumed=resumed)
            optimizer, scheduler = self.optimizer_for(stage)
            if resume is not None and index == at.stage:
                if resumed:
                    optimizer.load_state_dict(resume.optimizer)
                    scheduler.load_state_dict(resume.scheduler)
                    if resume.scaler:  # empty when loss scaling is off
                        self.scaler.load_state_dict(resume.scaler)
                checkpoint.restore_rng(resume.rng_of(self.dist.rank))
            for epoch in range(first_epoch, stage.epochs):
                started = time.perf_counter()
                partial = resume.partial if resume is not None and first_step and epoch == first_epoch else None
                step = first_step if epoch == first_epoch else 0
                train = self._train_epoch(stage, index, epoch, global_epoch, optimizer, scheduler, step, partial)
                record = {
                    "stage": stage.name,
                    "stage_index": index,
                    "epoch": epoch + 1,
                    "global_epoch": global_epoch + 1,
                    "train": train,
                    "val": self._evaluate(self.objective.deployed_model(), "student"),
                    "lr": optimizer.param_groups[0]["lr"],
                    "epoch_time_s": round(time.perf_counter() - started, 3),
                }
                global_epoch += 1
                self.history.append(record)
                call_hook(self.pm, "kdzoo_on_epoch_end", run=self, stage=stage, epoch=epoch, metrics=record)
                done = epoch + 1 == stage.epochs
                if done:  # before the checkpoint, so a resumed run sees what the stage handed over
                    call_hook(self.pm, "kdzoo_on_stage_end", run=self, stage=stage, index=index)
                following = (
                    Position(index + 1, 0, 0, global_epoch) if done else Position(index, epoch + 1, 0, global_epoch)
                )
                self._save(optimizer, scheduler, following)
            if stage.epochs == 0:
                call_hook(self.pm, "kdzoo_on_stage_end", run=self, stage=stage, index=index)
        summary = self._summary()
        if self.dist.main:
            export_student(
                self.objective.deployed_model(),
                self.config,
                self.data.num_classes,
                self.data.in_chans,
                self.run_dir,
                self.objective.deploying,
            )
            checkpoint.write_text_atomic(json.dumps(summary, indent=2), self.run_dir / "summary.json")
        call_hook(self.pm, "kdzoo_on_run_end", run=self, summary=summary)
        return summary

    def _train_epoch(self, stage, index, epoch, global_epoch, optimizer, scheduler, start_step, partial) -> dict:
        self.student.train()
        self.modules.train()
        steps, totals, cache = len(self.data.train), EpochTotals(partial), self.teacher_cache
        batches = self.data.train.epoch(global_epoch, start_step, with_index=True)
        desc = f"{self.label}{stage.name} {epoch + 1}/{stage.epochs}"
        bar = tqdm(batches, total=steps, initial=start_step, leave=False, disable=self._quiet(), desc=desc)
        started, weights, every = time.perf_counter(), {}, self.config.train.checkpoint_every
        for step, (x, y, idx) in enumerate(bar, start=start_step):
            progress = (epoch + step / steps) / max(stage.epochs, 1)
            teacher_out = cache.lookup(idx, global_epoch, self.device) if cache is not None else None
            loss, terms, weights = self.train_step(x, y, stage, epoch, progress, optimizer, scheduler, teacher_out, idx)
            totals.add(step, loss, terms, len(y))
            done = step + 1
            if done % self.config.train.log_every == 0 or done == steps:  # the only host syncs
                totals.stop_if_nonfinite(stage, epoch, self.run_dir, self.dist)
                # under torchrun rank 0 shows throughput only; terms are averaged over ranks at epoch end
                shown = {} if self.dist.enabled else totals.running_means(done - start_step)
                bar.set_postfix({**shown, "img/s": f"{totals.rate(time.perf_counter() - started):.0f}"})
            stop = any_across(self.stop.signal is not None, self.dist)  # every rank stops at the same step
            if (stop or (every and done % every == 0)) and done < steps:
                totals.stop_if_nonfinite(stage, epoch, self.run_dir, self.dist)
                self._save(optimizer, scheduler, Position(index, epoch, done, global_epoch), totals.partial())
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
    def _save(self, optimizer, scheduler, position: Position, partial: dict | None = None) -> None:
        rngs = None
        if self.dist.enabled:  # every process's RNG state, so each resumes its own stream
            rngs = [None] * self.dist.world
            torch.distributed.all_gather_object(rngs, checkpoint.rng_state())
        if not self.dist.main:
            return
        method_teacher = None
        if self.method_teacher is not None:
            method_teacher = {"name": self.method_teacher, "state": self.teacher.state_dict()}
        RunState(
            self.config.to_dict(),
            self.student.state_dict(),
            self.modules.state_dict(),
            optimizer.state_dict(),
            scheduler.state_dict(),
            self.scaler.state_dict(),
            position,
            checkpoint.rng_state(),
            self.history,
            self.teacher_metrics,
            self._clock.wall(),
            partial,
            rngs,
            method_teacher,
            cpu_time_s=self._clock.cpu(),
        ).save(self.run_dir / "last.pt")

    def _restore(self, state: RunState) -> Position:
        """Load a checkpoint's weights and history; where to go on from (a finished run resumed with
        more ``train.epochs`` re-enters its last stage where it ended)."""
        self.student.load_state_dict(state.student)
        self.modules.load_state_dict(state.modules)
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
        if self.dist.main and self.show_progress is not False and at.stage <= last:
            stage = self.stages[at.stage]
            where = f"stage '{stage.name}' ({at.stage + 1}/{len(self.stages)}), epoch {at.epoch + 1}/{stage.epochs}"
            tqdm.write(f"{self.label}resuming {self.run_dir} at {where}" + (f", step {at.step + 1}" if at.step else ""))
        return at

    # ------------------------------------------------------------------ helpers
    @contextlib.contextmanager
    def _reporters(self, first_epoch: int):
        """The metrics file, console lines, TensorBoard and plots: on the main process only."""
        if not self.dist.main:
            yield
            return
        board = TensorBoardReporter(self.run_dir, first_epoch)
        reporters = [MetricsFileReporter(self.run_dir), board, PlotReporter()]
        if self.show_progress is not False:
            reporters.append(ConsoleReporter(self.label))
        for reporter in reporters:
            self.pm.register(reporter)
        try:
            yield
        finally:
            for reporter in reporters:
                self.pm.unregister(reporter)
            board.close()

    def _summary(self) -> dict[str, Any]:
        deployed = self.objective.deployed_model()
        last = self.history[-1]["val"] if self.history else self._evaluate(deployed, "student")
        teacher = self.config.teacher.model if self.teacher is not None else None
        if self.teacher_cache is not None:
            teacher = f"{self.config.teacher.model} (cached outputs)"
        elif self.method_teacher is not None:
            teacher = f"{self.config.student.model} ({self.method_teacher})"
        names = [stage.name for stage in self.stages]
        return summarise(
            self.config,
            self.history,
            names,
            last,
            teacher,
            self.teacher_metrics,
            self.data.name,
            self._clock,
            self.run_dir,
            deployed_costs(deployed, self.data.in_chans, self.config.data.img_size, self.objective.deploying),
            self.teacher_cache.fill_cpu_s() if self.teacher_cache is not None else None,
        )
