"""Where the teacher comes from: a checkpoint, cached pretrained weights, or kdzoo's own training.

A teacher kdzoo trains uses its own settings (``teacher.train``: epochs, seed, batch size,
optimizer), never the student's, and is cached under ``<cache>/teachers/<model>-<key>/`` keyed by
exactly what shapes it: architecture, those settings and the data. Changing the student's learning
rate therefore reuses the same teacher. The training run checkpoints like any run, so an
interrupted teacher training resumes (and says so); the entry is locked while it is written, so a
second process waits for it and then reuses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from kdzoo import checkpoint, locking
from kdzoo.config import RunConfig, StudentConfig, TrainConfig
from kdzoo.data import DataBundle, load_data
from kdzoo.errors import KdzooError
from kdzoo.models import create_model, load_weights
from kdzoo.paths import cache_dir
from kdzoo.plugins import Registry
from kdzoo.typed import as_dict

CACHE_FORMAT = 2
# the data settings that change what a teacher learns (batch size is the teacher's own setting)
_NOT_TEACHER_DATA = ("batch_size", "eval_batch_size", "num_workers")


def teacher_key(config: RunConfig) -> dict[str, Any]:
    """Everything that determines a teacher kdzoo trains, and nothing else."""
    t = config.teacher
    return {
        "format": CACHE_FORMAT,
        "model": t.model,
        "kwargs": t.kwargs,
        "pretrained": t.pretrained,
        "train": as_dict(t.train),
        "data": {k: v for k, v in as_dict(config.data).items() if k not in _NOT_TEACHER_DATA},
    }


def teacher_cache_dir(config: RunConfig) -> Path:
    key = hashlib.sha256(json.dumps(teacher_key(config), sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "teachers" / f"{config.teacher.model}-{key}"


def teacher_run_config(config: RunConfig) -> RunConfig:
    """The run that trains the teacher: its own epochs, seed, batch and optimizer; the machine
    settings (device, logging, checkpoint interval) of the run that needs it."""
    t, run = config.teacher, config.train
    as_student = StudentConfig(**{f.name: getattr(t, f.name) for f in dataclasses.fields(StudentConfig)})
    train = TrainConfig(
        epochs=t.train.epochs,
        seed=t.train.seed,
        device=run.device,
        log_every=run.log_every,
        checkpoint_every=run.checkpoint_every,
    )
    data = dataclasses.replace(config.data, batch_size=t.train.batch_size)
    return RunConfig(methods=[], student=as_student, data=data, optim=t.train.optim, train=train)


def obtain_teacher(config: RunConfig, data: DataBundle, registry: Registry, show_progress: bool | None) -> nn.Module:
    cfg = config.teacher
    if cfg.checkpoint or cfg.train.epochs == 0:
        if not (cfg.checkpoint or cfg.pretrained):
            raise KdzooError(
                "the teacher would be untrained: set teacher.checkpoint=FILE, teacher.pretrained=true "
                "or teacher.train.epochs > 0"
            )
        return create_model(cfg, "teacher", data.num_classes, data.in_chans)
    folder = teacher_cache_dir(config)
    say = tqdm.write if show_progress is not False else (lambda _text: None)
    with locking.writing(folder, lambda: say(f"teacher: another process is training it into {folder}; waiting")):
        weights = folder / "teacher.pt"
        if weights.is_file():
            model = create_model(dataclasses.replace(cfg, pretrained=False), "teacher", data.num_classes, data.in_chans)
            load_weights(model, weights, f"cached teacher '{cfg.model}'")
            say(f"teacher: {cfg.model} from cache {folder}")
            return model
        model = _train_teacher(config, registry, folder, show_progress, say)
        checkpoint.save_atomic({"model": model.state_dict()}, weights)
    return model


def _train_teacher(config: RunConfig, registry: Registry, folder: Path, show_progress, say) -> nn.Module:
    from kdzoo.engine import Trainer

    run = teacher_run_config(config)
    data = load_data(run.data, run.train.seed)
    checkpoint.seed_everything(run.train.seed)  # the teacher's init depends on its own settings only
    model = create_model(config.teacher, "teacher", data.num_classes, data.in_chans)
    last = folder / "last.pt"
    resume = checkpoint.load(last) if last.is_file() else None
    if resume is None:  # a resumed training says where it resumes itself
        say(f"teacher: training {config.teacher.model} for {run.train.epochs} epochs (cached in {folder})")
    trainer = Trainer(
        run,
        registry,
        folder,
        data=data,
        student=model,
        show_progress=show_progress,
        label="teacher ",
        distributed=False,
    )
    trainer.fit(resume=resume)
    return trainer.student.cpu()


def teacher_weights_file(config: RunConfig) -> Path | None:
    """The file the teacher's weights come from, if it exists yet (not before kdzoo trained it)."""
    from kdzoo.models import cached_pretrained_file

    cfg = config.teacher
    if cfg.checkpoint:
        return Path(cfg.checkpoint)
    if cfg.train.epochs == 0:
        return cached_pretrained_file(cfg.model) if cfg.pretrained else None
    trained = teacher_cache_dir(config) / "teacher.pt"
    return trained if trained.is_file() else None
