"""Building a run: everything the loop needs, assembled before its first step.

:func:`build_run` owns the set-up of one run: processes (torchrun) and device, seeding, data, the
selected methods, the teacher (given, loaded, or trained here and cached), the teacher-output
cache, the objective (taps, method modules, schedule), precision, compilation and data
parallelism. It returns a :class:`~kdzoo.engine.parts.RunParts` record; :func:`build_trainer` hands that to the loop
(:class:`kdzoo.engine.loop.Trainer`). Training a missing teacher is a run of its own, built the
same way (:func:`obtain_teacher`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from kdzoo import checkpoint
from kdzoo.api import KdzooError, LoggerInfo, ModelInfo, TrainingSet
from kdzoo.config import RunConfig
from kdzoo.data import DataBundle, DistInfo, load_data
from kdzoo.data.inputs import adapter, requests_of
from kdzoo.engine import assistants, locking
from kdzoo.engine import teacher_files as teachers
from kdzoo.engine.cache_entries import why_new_entry
from kdzoo.engine.cache_fill import fill_together
from kdzoo.engine.distributed import (
    any_across,
    broadcast_from_main,
    broadcast_module_state,
    first_failure,
    global_batchnorm,
    init_from_env,
)
from kdzoo.engine.ensemble import TeacherEnsemble
from kdzoo.engine.evaluate import evaluate
from kdzoo.engine.extract import describe
from kdzoo.engine.loop import Trainer
from kdzoo.engine.objective import Objective, check_compile_backend
from kdzoo.engine.parts import RunParts
from kdzoo.engine.state import RunState
from kdzoo.engine.step import Step
from kdzoo.engine.teacher_cache import TeacherOutputCache, check_cacheable, data_settings
from kdzoo.models import check_label_sets, check_pair, create_model, folder_name
from kdzoo.registry import Registry
from kdzoo.reporting.reporters import CORE_LOGGERS


def build_trainer(config: RunConfig, registry: Registry, run_dir: str | Path, **options: Any) -> Trainer:
    """A :class:`Trainer` for ``config``: call ``.fit()``. ``options`` are :func:`build_run`'s
    (``teacher``, ``data`` and ``student`` given directly for library use, ``show_progress``...)."""
    return Trainer(build_run(config, registry, **options), run_dir)


def build_run(
    config: RunConfig,
    registry: Registry,
    teacher: nn.Module | None = None,
    data: DataBundle | None = None,
    student: nn.Module | None = None,
    show_progress: bool | None = None,
    label: str = "",
    distributed: bool = True,
    warm_cache: bool = True,
) -> RunParts:
    """Everything a run needs, built from ``config``. ``warm_cache=False`` leaves the teacher-output cache
    as it is (a check that the run can be built, which must not run the teacher over the data)."""
    dist = init_from_env() if distributed else DistInfo()
    loggers = chosen_loggers(config.train.loggers, registry)  # before anything slow: a typo fails at once
    show_progress = show_progress if dist.main else False
    checkpoint.seed_everything(config.train.seed)  # the same seed everywhere: identical replicas
    device = pick_device(config.train.device, dist)
    data = data or _loaded_everywhere(config, dist)
    data.train.to(device)
    data.val.to(device)
    if data.teacher_val is not None:
        data.teacher_val.to(device)
    infos = [registry.get(name) for name in config.methods]
    methods = {info.name: info.factory(config.method_configs[info.name]) for info in infos}
    needs_teacher = any(info.wants_teacher(config.method_configs[info.name]) for info in infos)
    for info in infos:
        if info.min_teachers > max(len(config.teachers), 1):
            raise KdzooError(
                f"method '{info.name}' distils from {info.min_teachers} teachers or more; list them under "
                f"teachers: (this run has {max(len(config.teachers), 1)})"
            )
    if needs_teacher:
        check_label_sets(config, data.num_classes)
    student = student or create_model(config.student, "student", data.num_classes, data.in_chans)
    if config.teachers and any(t.assistants for t in config.teachers):
        raise KdzooError("teachers: a teacher of several has teacher assistants; give assistants to one teacher only")
    if needs_teacher and teacher is not None and config.teachers:
        raise KdzooError("teachers: several teachers are built from the config, and a teacher model was given")
    if needs_teacher and teacher is not None and config.teacher.assistants:
        raise KdzooError(
            "teacher.assistants: the chain starts from the config's teacher, and a teacher model was given; "
            "give the chain's start as teacher.model / teacher.checkpoint instead"
        )
    ready = _Teacher(config, registry, data, dist, show_progress)
    cache = teacher_info = None
    if needs_teacher and teacher is None and config.teacher.cache:
        cacheable = check_cacheable(data.train, config.data.mixing)  # before the teacher is trained for it
        cache = TeacherOutputCache(
            ready.identity(),
            data_settings(config, data.contents, data.inputs),
            cacheable,
            topk=config.teacher.cache_topk,
        )
        teacher_info = cache.teacher_info()  # known without the teacher once the cache was filled
    if needs_teacher and teacher is None and any_across(teacher_info is None, dist):
        teacher = ready.model()  # every process together (some node may lack the cache entry)
    teacher = teacher if needs_teacher else None
    check_pair(teacher, student, config.taught_by(), config.student.model)
    if teacher is not None:
        img_size = ready.config.teacher.img_size or config.data.img_size
        teacher_info = describe(teacher, config.taught_by(), img_size)
    student.to(device)
    s_info = describe(student, config.student.model, config.data.img_size)
    train_set = TrainingSet(
        data.train.num_samples, data.train.class_labels(), config.data.batch_size // dist.world, device
    )
    objective = Objective(
        methods,
        student,
        s_info,
        teacher,
        teacher_info,
        train_set,
        infos={info.name: info.for_config(config.method_configs[info.name]) for info in infos},
        teacher_members=len(config.teachers),
    ).to(device)
    objective.label_smoothing = config.train.label_smoothing
    if data.inputs is not None:
        objective.use_inputs(data.inputs)
    if cache is not None and objective.views:
        raise KdzooError(
            f"teacher.cache: methods {sorted(objective.view_methods)} train on {len(objective.views) + 1} views of "
            "each image drawn every step, and a teacher-output cache holds one view per sample: "
            "set teacher.cache=false"
        )
    if cache is not None and warm_cache and teacher_info is not None:
        incomplete = any_across(not cache.complete_for(objective.taps), dist)
        if objective.teacher is None and incomplete:
            objective.set_teacher(ready.model(), teacher_info)  # every process together, before any waits
        if incomplete and dist.enabled:  # the processes fill it together, each its share of the batches
            tap = objective.teacher_tap
            assert tap is not None  # set just above
            fill_together(
                cache,
                objective.taps,
                tap,
                lambda: _remember_accuracy(cache, objective, ready, teacher_info),
                config.data.eval_batch_size,
                device,
                _say(show_progress),
                dist,
            )
        with ready.main_first():
            _warm(cache, objective, ready, teacher_info, device, show_progress)
    stages = objective.schedule(config.train.epochs)
    objective.check_weights(stages)
    if show_progress is not False:
        for line in objective.weight_conflicts(stages):
            tqdm.write(line)
    _set_up_precision_and_compile(config, objective)
    if dist.enabled:
        _set_up_data_parallel(config, dist, data, objective, show_progress)
    step = Step(objective, config, dist, len(data.train))
    return RunParts(
        config=config,
        dist=dist,
        device=device,
        data=data,
        step=step,
        stages=stages,
        show_progress=show_progress,
        label=label,
        method_sources=registry.method_sources(config.methods),
        loggers=loggers,
        assistant_runs=assistants.link_runs(config, data.contents) if ready.chain_used else (),
    )


def chosen_loggers(names: list[str], registry: Registry) -> tuple[LoggerInfo, ...]:
    """The trackers ``train.loggers`` names, each installed (else one line naming its extra)."""
    import importlib.util

    available = {**registry.loggers, **CORE_LOGGERS}  # a plugin's tracker does not replace the core's
    chosen = []
    for name in names:
        if name not in available:
            known = ", ".join(sorted(available))
            raise KdzooError(f"config key 'train.loggers': unknown logger '{name}' (installed: {known})")
        info = available[name]
        missing = [module for module in info.requires if importlib.util.find_spec(module) is None]
        if missing:
            install = f"pip install 'kdzoo[{info.extra}]'" if info.extra else f"pip install {' '.join(missing)}"
            raise KdzooError(f"train.loggers: {name} needs {', '.join(missing)}, which is not installed: {install}")
        chosen.append(info)
    return tuple(chosen)


def _loaded_everywhere(config: RunConfig, dist: DistInfo) -> DataBundle:
    """The run's data, loaded by every process (each node reads its own copy); a process that cannot
    load it ends every process with its one line (the others would wait for it in the next collective)."""
    data, error = None, None
    try:
        data = load_data(config.data, config.train.seed, requests_of(config))
    except KdzooError as exc:
        error = str(exc)
    failure = first_failure(error, dist)
    if failure is not None:
        raise KdzooError(failure)
    assert data is not None
    return data


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


class _Teacher:
    """The teacher the student learns from, obtained at most once, on the main process first under
    torchrun (it trains and caches the teacher, and the chain of assistants after it; the others then
    read it), without shifting the run's RNG. ``config`` is the run's with that teacher as its teacher:
    under ``teacher.assistants`` the last of them, whose weights the chain stores."""

    def __init__(self, config: RunConfig, registry: Registry, data: DataBundle, dist: DistInfo, show_progress):
        self.chain = config
        self.chain_used = bool(config.teacher.assistants)  # the student learns from the chain's last link
        if config.teacher.assistants:
            config = dataclasses.replace(config, teacher=assistants.teacher_of_the_student(config, data.contents))
        self.config, self.registry, self.data, self.dist, self.show_progress = (
            config,
            registry,
            data,
            dist,
            show_progress,
        )
        #: the run's config for each teacher to obtain: one, or each of several (``teachers:``)
        self.each = [dataclasses.replace(config, teacher=one, teachers=[]) for one in config.teachers] or [config]
        self._model: nn.Module | None = None

    def model(self) -> nn.Module:
        """The teacher. Under torchrun every process calls this together: the main process obtains
        it (given, cached or trained) and the others receive its weights over the process group, so
        no node needs the teacher's files (nodes share no filesystem)."""
        if self._model is None:
            rng = checkpoint.rng_state()
            with self.main_first():
                if self.dist.main:
                    if self.chain.teacher.assistants:
                        link = functools.partial(_train_link, registry=self.registry, show_progress=self.show_progress)
                        assistants.train_assistants(self.chain, self.data.contents, link, _say(self.show_progress))
                    models = [obtain_teacher(one, self.registry, self.data, self.show_progress) for one in self.each]
                else:  # the architectures only: the weights come from the main process
                    models = [
                        create_model(
                            dataclasses.replace(one.teacher, pretrained=False, checkpoint=None),
                            "teacher",
                            self.data.num_classes,
                            self.data.in_chans,
                        )
                        for one in self.each
                    ]
                self._model = models[0] if len(models) == 1 else self._ensemble(models)
            if self.dist.enabled:
                broadcast_module_state(self._model)
            checkpoint.restore_rng(rng)
        return self._model

    def identity(self) -> str:
        """What the teacher's outputs are cached under: its weights (trained first if need be), as the
        main process finds them (every process calls this together under torchrun)."""
        identity = broadcast_from_main(self._identity(), self.dist)
        if identity is None:
            self.model()
            identity = broadcast_from_main(self._identity(), self.dist)
        assert identity is not None  # the teacher's weights file exists once it is trained
        return identity

    def _identity(self) -> str | None:
        """The teacher's weights (each of several teachers', in order), or ``None`` before they exist."""
        found = [teachers.teacher_identity(one, self.data.contents) for one in self.each]
        if any(identity is None for identity in found):
            return None
        return found[0] if len(found) == 1 else "ensemble of " + " | ".join(str(identity) for identity in found)

    def _ensemble(self, models: list[nn.Module]) -> TeacherEnsemble:
        """Several teachers as one model, each fed its own input made from the first's."""
        inputs = self.data.inputs
        adapters: list[nn.Module | None] = [None] * len(models)
        if inputs is not None:
            adapters = [adapter(inputs.teacher, member) for member in inputs.members]
        return TeacherEnsemble(models, adapters, [one.teacher.model for one in self.each])

    @contextlib.contextmanager
    def main_first(self):
        """The main process first (it trains the teacher, fills the cache), then the others. They wait
        in a group of their own without a practical time limit: training a teacher can take longer than
        the run's process group allows a collective (30 minutes by default), which would end the run.
        When the main process fails there, the others end with its error rather than wait for ever."""
        if not self.dist.enabled:
            yield
            return
        waiting = torch.distributed.new_group(backend="gloo", timeout=datetime.timedelta(days=30))
        try:
            if not self.dist.main:
                failed: list[str | None] = [None]
                torch.distributed.broadcast_object_list(failed, src=0, group=waiting)
                if failed[0] is not None:
                    raise KdzooError(f"the main process (rank 0) failed: {failed[0]}")
                yield
                return
            failure = None
            try:
                yield
            except BaseException as exc:
                failure = str(exc) if isinstance(exc, KdzooError) else f"{type(exc).__name__}: {exc}"
                raise
            finally:
                torch.distributed.broadcast_object_list([failure], src=0, group=waiting)
        finally:
            torch.distributed.destroy_process_group(waiting)


def obtain_teacher(config: RunConfig, registry: Registry, data: DataBundle, show_progress: bool | None) -> nn.Module:
    """The teacher the config describes: given, or trained before (cached), or trained now with
    its own settings and cached. The cache entry is locked while it is written."""
    given = teachers.given_teacher(config, data.num_classes, data.in_chans)
    if given is not None:
        return given
    folder = teachers.teacher_cache_dir(config, data.contents)
    say = tqdm.write if show_progress is not False else (lambda _text: None)
    with locking.writing(folder, lambda: say(f"teacher: another process is training it into {folder}; waiting")):
        model = teachers.load_trained_teacher(config, data.contents, data.num_classes, data.in_chans)
        if model is not None:
            say(f"teacher: {config.teacher.model} from cache {folder} (these teacher settings, this data)")
            return model
        why = why_new_entry(
            folder, teachers.teacher_key(config, data.contents), f"{folder_name(config.teacher.model)}-*"
        )
        model = _train_teacher(config, registry, folder, show_progress, say, why)
        teachers.save_trained_teacher(config, data.contents, model)
    return model


def _train_teacher(config: RunConfig, registry: Registry, folder: Path, show_progress, say, why: str) -> nn.Module:
    run = teachers.teacher_run_config(config)
    data = load_data(run.data, run.train.seed, requests_of(run))  # the teacher's own input
    checkpoint.seed_everything(run.train.seed)  # the teacher's init depends on its own settings only
    model = create_model(config.teacher, "teacher", data.num_classes, data.in_chans)
    said = f"teacher: training {config.teacher.model} for {run.train.epochs} epochs (cached in {folder}; {why})"
    trainer = _fit_in_cache(run, registry, folder, "teacher ", said, say, show_progress, data=data, student=model)
    return trainer.student.cpu()


def _train_link(config: RunConfig, folder: Path, label: str, why: str, registry: Registry, show_progress) -> None:
    """One assistant of a teacher-assistant chain distilled into ``folder`` (a run of its own, on the
    main process: its teacher, the link before it, was obtained there)."""
    said = f"{label.strip()}: distilling it for {config.train.epochs} epochs (cached in {folder}; {why})"
    _fit_in_cache(config, registry, folder, label, said, _say(show_progress), show_progress)


def _fit_in_cache(
    run: RunConfig, registry: Registry, folder: Path, label: str, said: str, say, show_progress, **given: Any
) -> Trainer:
    """``run`` trained in cache entry ``folder`` on this process alone, going on from the checkpoint a
    killed training left there (which says where it resumes itself; a fresh one says ``said``)."""
    last = folder / "last.pt"
    resume = RunState.load(last) if last.is_file() else None
    if resume is None:
        say(said)
    trainer = build_trainer(run, registry, folder, show_progress=show_progress, label=label, distributed=False, **given)
    trainer.fit(resume=resume)
    return trainer


def _warm(
    cache: TeacherOutputCache,
    objective: Objective,
    ready: _Teacher,
    info: ModelInfo,
    device: torch.device,
    show_progress,
) -> None:
    """Fill the teacher-output cache for the objective's taps unless done before (by this or
    another process: the entry is locked while written); then the teacher's outputs come from it and
    the model is let go. A damaged entry is filled again, saying so."""
    if not cache.select(objective.taps) or cache.teacher_metrics() is None:
        waiting = f"teacher-output cache {cache.root}: another process is writing it; waiting"
        with locking.writing(cache.root, lambda: tqdm.write(waiting) if show_progress is not False else None):
            filled = cache.select(objective.taps)  # again: it may have been written while we waited
            if not filled or cache.teacher_metrics() is None:
                say = _say(show_progress)
                if cache.damage is not None:
                    say(f"teacher-output cache: {cache.damage}; filling it again")
                elif not filled and not cache.info_file.is_file():
                    say(f"teacher-output cache: filling {cache.root} ({cache.why_new()})")
                if objective.teacher is None:  # found complete by every process before; damaged since
                    raise KdzooError(
                        f"teacher-output cache {cache.root} changed while this run started; start it again"
                    )
                tap = objective.teacher_tap
                assert tap is not None  # set just above
                # the teacher's accuracy first: a process that finds the outputs complete finds it too
                _remember_accuracy(cache, objective, ready, info)
                if not filled:
                    cache.fill(tap, ready.config.data.eval_batch_size, device, say)
                    cache.select(objective.taps)
    objective.teacher_side.use_cache(cache, info)
    objective.teacher_side.metrics = cache.teacher_metrics()
    if show_progress is not False:
        tqdm.write(cache.describe())


def _remember_accuracy(cache: TeacherOutputCache, objective: Objective, ready: _Teacher, info: ModelInfo) -> None:
    """The teacher's accuracy on its own validation inputs, kept with its outputs."""
    assert objective.teacher is not None  # set before a fill
    who = f"teacher ({ready.config.teacher.model})"
    metrics = evaluate(objective.teacher, ready.data.teacher_val_batches.epoch(0), ready.data.num_classes, who)
    cache.remember(info, metrics)


def _say(show_progress) -> Callable[[str], None]:
    return tqdm.write if show_progress is not False else (lambda _text: None)


def _set_up_precision_and_compile(config: RunConfig, objective: Objective) -> None:
    if config.train.precision == "fp64":  # after the teacher-output cache is filled: it stores float32
        objective.to_dtype(torch.float64)
    if config.train.channels_last:
        objective.student_tap.model.to(memory_format=torch.channels_last)
        if objective.teacher is not None:
            objective.teacher.to(memory_format=torch.channels_last)
    if config.train.precision == "fp16":
        # the scaler skips the optimizer on steps whose gradients overflowed (it then lowers the
        # scale); the schedule still advancing one step there is intended, not a misordering
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
    if config.train.compile or config.train.compile_objective:
        check_compile_backend(config.train.compile_backend)
    if config.train.compile:
        objective.compile(config.train.compile_mode, config.train.compile_backend)
    if config.train.compile_objective:
        objective.compile_objective(config.train.compile_mode, config.train.compile_backend)


def _set_up_data_parallel(config: RunConfig, dist: DistInfo, data: DataBundle, objective: Objective, show) -> None:
    """Each process trains on its share of every global batch."""
    if config.data.batch_size % dist.world:
        raise KdzooError(
            f"data.batch_size={config.data.batch_size} is the global batch and must split evenly over "
            f"{dist.world} processes"
        )
    objective.distribute(dist)
    # batch statistics over the global batch: the student's forward sees this process's share, and so do
    # the modules of a method that sees its share; a method that sees the global batch has it already
    global_batchnorm(objective.student_tap.model)
    for name, modules in objective.method_modules.items():
        if objective.infos[name].batch == "local":
            global_batchnorm(modules)
    data.train.shard_info = dist
    if dist.main and show is not False:
        tqdm.write(
            f"distributed: {dist.world} processes ({torch.distributed.get_backend()}), global batch "
            f"{config.data.batch_size} = {dist.world} x {config.data.batch_size // dist.world}, "
            f"optim.lr={config.optim.lr} for the global batch"
        )
