"""Where the teacher comes from: a checkpoint, cached pretrained weights, or kdzoo's own training.

A teacher kdzoo trains is cached under ``<cache>/teachers/<model>-<key>/``, keyed by everything
that determines it (teacher, data and optimizer settings, seed), so later runs reuse it; the
training run itself checkpoints like any run, so an interrupted teacher training resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from torch import nn
from tqdm.auto import tqdm

from kdzoo import checkpoint
from kdzoo.config import RunConfig, StudentConfig, TrainConfig
from kdzoo.data import DataBundle
from kdzoo.errors import KdzooError
from kdzoo.models import create_model, load_weights
from kdzoo.paths import cache_dir
from kdzoo.plugins import Registry
from kdzoo.typed import as_dict

CACHE_FORMAT = 1


def teacher_cache_dir(config: RunConfig) -> Path:
    key_data = {
        "format": CACHE_FORMAT,
        "teacher": as_dict(config.teacher),
        "data": {k: v for k, v in as_dict(config.data).items() if k not in ("num_workers", "eval_batch_size")},
        "optim": as_dict(config.optim),
        "seed": config.train.seed,
    }
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "teachers" / f"{config.teacher.model}-{key}"


def obtain_teacher(config: RunConfig, data: DataBundle, registry: Registry, show_progress: bool | None) -> nn.Module:
    cfg = config.teacher
    if cfg.checkpoint or cfg.train_epochs == 0:
        if not (cfg.checkpoint or cfg.pretrained):
            raise KdzooError(
                "the teacher would be untrained: set teacher.checkpoint=FILE, teacher.pretrained=true "
                "or teacher.train_epochs > 0"
            )
        return create_model(cfg, "teacher", data.num_classes, data.in_chans)
    folder = teacher_cache_dir(config)
    weights = folder / "teacher.pt"
    if weights.is_file():
        model = create_model(dataclasses.replace(cfg, pretrained=False), "teacher", data.num_classes, data.in_chans)
        load_weights(model, weights, f"cached teacher '{cfg.model}'")
        if show_progress is not False:
            tqdm.write(f"teacher: {cfg.model} from cache {folder}")
        return model
    from kdzoo.engine import Trainer

    student_like = StudentConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(StudentConfig)})
    train = dataclasses.replace(config.train, epochs=cfg.train_epochs)
    teacher_run = RunConfig(
        methods=[], student=student_like, data=config.data, optim=config.optim, train=TrainConfig(**as_dict(train))
    )
    checkpoint.seed_everything(config.train.seed)  # the teacher's init depends on its own config only
    model = create_model(cfg, "teacher", data.num_classes, data.in_chans)
    if show_progress is not False:
        tqdm.write(f"teacher: training {cfg.model} for {cfg.train_epochs} epochs (cached in {folder})")
    trainer = Trainer(
        teacher_run,
        registry,
        folder,
        data=data,
        student=model,
        show_progress=show_progress,
        label="teacher ",
        distributed=False,
    )
    last = folder / "last.pt"
    trainer.fit(resume=checkpoint.load(last) if last.is_file() else None)
    checkpoint.save_atomic({"model": trainer.student.state_dict()}, weights)
    return trainer.student.cpu()


def teacher_weights_file(config: RunConfig) -> Path | None:
    """The file the teacher's weights come from, if it exists yet (not before kdzoo trained it)."""
    from kdzoo.models import cached_pretrained_file

    cfg = config.teacher
    if cfg.checkpoint:
        return Path(cfg.checkpoint)
    if cfg.train_epochs == 0:
        return cached_pretrained_file(cfg.model) if cfg.pretrained else None
    trained = teacher_cache_dir(config) / "teacher.pt"
    return trained if trained.is_file() else None
