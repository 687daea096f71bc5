"""The teacher's weights files: a checkpoint, cached pretrained weights, or the trained-teacher cache.

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
import math
from pathlib import Path
from typing import Any

from torch import nn

from kdzoo import checkpoint
from kdzoo.config import DataConfig, RunConfig, StudentConfig, TrainConfig, as_dict
from kdzoo.data import DataContents
from kdzoo.engine.cache_entries import remember_key
from kdzoo.errors import KdzooError
from kdzoo.models import cached_pretrained_file, create_model, folder_name, load_weights
from kdzoo.paths import cache_dir

CACHE_FORMAT = 4  # 3: keyed by the data's contents and the teacher's own data settings; 4: balanced train_limit


def teacher_data(config: RunConfig) -> DataConfig:
    """The data settings the teacher trains with: the run's dataset and image size, the teacher's own
    batch, augmentation and sample limit, and the dataset's plain augmentation (never the student's
    recipe: RandAugment, erasing, mixup... are not in the trained-teacher cache key)."""
    t, d = config.teacher.train, config.data
    # a streamed dataset's epoch: as many samples as the student's, in the teacher's batches
    steps = None if d.steps_per_epoch is None else math.ceil(d.steps_per_epoch * d.batch_size / t.batch_size)
    return DataConfig(
        name=d.name,
        train_split=d.train_split,
        val_split=d.val_split,
        root=d.root,
        img_size=config.teacher.img_size or d.img_size,
        eval_batch_size=d.eval_batch_size,
        num_workers=d.num_workers,
        batch_size=t.batch_size,
        augment=t.augment,
        train_limit=t.train_limit,
        steps_per_epoch=steps,
        stream_partitions=d.stream_partitions,
        shuffle_buffer=d.shuffle_buffer,
    )


def teacher_key(config: RunConfig, contents: DataContents | None) -> dict[str, Any]:
    """Everything that determines a teacher kdzoo trains, and nothing else: its architecture, its own
    settings, and the data it reads (what the training split holds, and how it is made into inputs;
    ``data.root`` is where the files are, not what they hold, so it is left out)."""
    t = config.teacher
    return {
        "format": CACHE_FORMAT,
        "model": t.model,
        "kwargs": t.kwargs,
        "pretrained": t.pretrained,
        "train": as_dict(t.train),
        "data": {
            "name": config.data.name,
            "img_size": config.teacher.img_size or config.data.img_size,
            "contents": contents.train if contents is not None else _settings_only(config),
        },
    }


def _settings_only(config: RunConfig) -> dict[str, Any]:
    """For data whose contents kdzoo cannot see (a user's own loader): its settings, as before."""
    return {k: v for k, v in as_dict(config.data).items() if k not in ("batch_size", "eval_batch_size", "num_workers")}


def teacher_cache_dir(config: RunConfig, contents: DataContents | None) -> Path:
    key = hashlib.sha256(json.dumps(teacher_key(config, contents), sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "teachers" / f"{folder_name(config.teacher.model)}-{key}"


def teacher_run_config(config: RunConfig) -> RunConfig:
    """The run that trains the teacher: its own epochs, seed, batch, optimizer and data settings
    (:func:`teacher_data`); the machine settings (device, logging, checkpoint interval) of the run
    that needs it."""
    t, run = config.teacher, config.train
    as_student = StudentConfig(**{f.name: getattr(t, f.name) for f in dataclasses.fields(StudentConfig)})
    train = TrainConfig(
        epochs=t.train.epochs,
        seed=t.train.seed,
        device=run.device,
        log_every=run.log_every,
        checkpoint_every=run.checkpoint_every,
    )
    return RunConfig(methods=[], student=as_student, data=teacher_data(config), optim=t.train.optim, train=train)


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


def load_trained_teacher(
    config: RunConfig, contents: DataContents | None, num_classes: int, in_chans: int
) -> nn.Module | None:
    """The teacher kdzoo trained for this config and data before, from the cache, or ``None``."""
    weights = teacher_cache_dir(config, contents) / "teacher.pt"
    if not weights.is_file():
        return None
    cfg = dataclasses.replace(config.teacher, pretrained=False)
    model = create_model(cfg, "teacher", num_classes, in_chans)
    load_weights(model, weights, f"cached teacher '{cfg.model}'")
    return model


def save_trained_teacher(config: RunConfig, contents: DataContents | None, model: nn.Module) -> None:
    """The trained teacher into its cache entry, with the key that made it (to say later why another
    run trained another teacher)."""
    folder = teacher_cache_dir(config, contents)
    checkpoint.save_atomic({"model": model.state_dict()}, folder / "teacher.pt")
    remember_key(folder, teacher_key(config, contents))


def teacher_weights_file(config: RunConfig, contents: DataContents | None) -> Path | None:
    """The file the teacher's weights come from, if it exists yet (not before kdzoo trained it)."""
    cfg = config.teacher
    if cfg.checkpoint:  # not there yet: an assistant of a chain not trained yet (or a wrong path, said on loading)
        return Path(cfg.checkpoint) if Path(cfg.checkpoint).is_file() else None
    if cfg.train.epochs == 0:
        return cached_pretrained_file(cfg.model) if cfg.pretrained else None
    trained = teacher_cache_dir(config, contents) / "teacher.pt"
    return trained if trained.is_file() else None


def teacher_identity(config: RunConfig, contents: DataContents | None) -> str | None:
    """What makes the teacher this teacher, for caches of its outputs: its architecture and the
    digest of its weights file (``None`` until kdzoo has trained it)."""
    weights = teacher_weights_file(config, contents)
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
