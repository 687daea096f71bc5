"""Where the teacher comes from: a checkpoint, cached pretrained weights, or the trained-teacher cache.

This module locates, loads and saves teachers; training a missing one is the run builder's job
(:func:`kdzoo.engine.build.obtain_teacher`). A teacher kdzoo trains uses its own settings
(``teacher.train``: epochs, seed, batch size, optimizer), never the student's, and is cached under
``<cache>/teachers/<model>-<key>/`` keyed by exactly what shapes it: architecture, those settings
and the data. Changing the student's learning rate therefore reuses the same teacher.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from torch import nn

from kdzoo import checkpoint
from kdzoo.config import RunConfig, StudentConfig, TrainConfig, as_dict
from kdzoo.errors import KdzooError
from kdzoo.models import cached_pretrained_file, create_model, load_weights
from kdzoo.paths import cache_dir

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


def given_teacher(config: RunConfig, num_classes: int, in_chans: int) -> nn.Module | None:
    """The teacher as the config gives it (a checkpoint, or pretrained weights used as they are), or
    ``None`` when kdzoo has to train it."""
    cfg = config.teacher
    if not (cfg.checkpoint or cfg.train.epochs == 0):
        return None
    if not (cfg.checkpoint or cfg.pretrained):
        raise KdzooError(
            "the teacher would be untrained: set teacher.checkpoint=FILE, teacher.pretrained=true "
            "or teacher.train.epochs > 0"
        )
    return create_model(cfg, "teacher", num_classes, in_chans)


def load_trained_teacher(config: RunConfig, num_classes: int, in_chans: int) -> nn.Module | None:
    """The teacher kdzoo trained for this config before, from the cache, or ``None``."""
    weights = teacher_cache_dir(config) / "teacher.pt"
    if not weights.is_file():
        return None
    cfg = dataclasses.replace(config.teacher, pretrained=False)
    model = create_model(cfg, "teacher", num_classes, in_chans)
    load_weights(model, weights, f"cached teacher '{cfg.model}'")
    return model


def save_trained_teacher(config: RunConfig, model: nn.Module) -> None:
    checkpoint.save_atomic({"model": model.state_dict()}, teacher_cache_dir(config) / "teacher.pt")


def teacher_weights_file(config: RunConfig) -> Path | None:
    """The file the teacher's weights come from, if it exists yet (not before kdzoo trained it)."""
    cfg = config.teacher
    if cfg.checkpoint:
        return Path(cfg.checkpoint)
    if cfg.train.epochs == 0:
        return cached_pretrained_file(cfg.model) if cfg.pretrained else None
    trained = teacher_cache_dir(config) / "teacher.pt"
    return trained if trained.is_file() else None


def teacher_identity(config: RunConfig) -> str | None:
    """What makes the teacher this teacher, for caches of its outputs: its architecture and the
    digest of its weights file (``None`` until kdzoo has trained it)."""
    weights = teacher_weights_file(config)
    if weights is None:
        return None
    cfg = config.teacher
    return f"{cfg.model}:{json.dumps(cfg.kwargs, sort_keys=True)}:{file_digest(weights)}"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
