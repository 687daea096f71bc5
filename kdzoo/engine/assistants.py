"""The teacher-assistant chain (TAKD, Mirzadeh et al., AAAI 2020): teacher -> assistants -> student.

When the gap between teacher and student is large, the student learns better from a model between
them, itself distilled from the teacher. Each assistant of ``teacher.assistants`` is distilled from the
link before it by the run's own methods and settings (its own ``epochs``), as a run of its own in the
cache, ``<cache>/assistants/<model>-<key>/`` (its metrics, checkpoints, summary and exported weights:
the chain's intermediate models). The key is exactly what shapes the link: the link before it (its
key, or its weights file's digest when given), its architecture and epochs, the methods and their
settings, the data (its contents) and the optimizer and training settings. A link killed while it
trains goes on from its last checkpoint; a link trained once serves every run it fits (other
students, distilled through the same assistant).

The student's teacher is the last link: its weights file, used as it is
(:func:`teacher_of_the_student`), obtained through the run builder's teacher like any given teacher.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdzoo.config import AssistantConfig, RunConfig, StudentConfig, TeacherConfig, as_dict
from kdzoo.data import DataContents
from kdzoo.engine import teacher_files as teachers
from kdzoo.engine.cache_entries import remember_key, why_new_entry
from kdzoo.errors import KdzooError
from kdzoo.models import folder_name
from kdzoo.paths import cache_dir

FORMAT = 1
WEIGHTS = "student.safetensors"  #: a link's exported student: the next link's teacher
#: where and how a run reports, not what it learns: left out of a link's key
MACHINE_SETTINGS = ("device", "out_dir", "name", "log_every", "checkpoint_every", "loggers")


def teacher_of_the_student(config: RunConfig, contents: DataContents | None) -> TeacherConfig:
    """The teacher the student learns from: the last assistant (its weights file: given, or where the
    chain stores it once trained), else the run's teacher."""
    return _teacher_of_link(config, contents, len(config.teacher.assistants))


def link_config(config: RunConfig, contents: DataContents | None, index: int) -> RunConfig:
    """The run that distils assistant ``index``: the run's own, with that assistant as the student,
    the link before it as the teacher, and the assistant's epochs."""
    assistant = config.teacher.assistants[index]
    return dataclasses.replace(
        config,
        teacher=_teacher_of_link(config, contents, index),
        student=StudentConfig(model=assistant.model, kwargs=dict(assistant.kwargs)),
        train=dataclasses.replace(config.train, epochs=assistant.epochs or config.train.epochs),
    )


def link_folder(config: RunConfig, contents: DataContents | None, index: int) -> Path:
    return _folder(config.teacher.assistants[index], _key(config, contents, index))


def _folder(assistant: AssistantConfig, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "assistants" / f"{folder_name(assistant.model)}-{digest}"


def train_assistants(
    config: RunConfig,
    contents: DataContents | None,
    train_link: Callable[[RunConfig, Path, str, str], None],
    say: Callable[[str], None],
) -> None:
    """Every link of the chain trained (``train_link(link config, folder, label, why)``, which resumes
    a killed link from its folder's checkpoint), or found in the cache; the entry is locked while written."""
    from kdzoo.engine import locking

    for index, assistant in enumerate(config.teacher.assistants):
        if assistant.checkpoint:
            continue
        key = _key(config, contents, index)
        folder, name = _folder(assistant, key), f"assistant {index + 1} ({assistant.model})"
        waiting = f"{name}: another process is training it into {folder}; waiting"
        with locking.writing(folder, functools.partial(say, waiting)):
            if _trained(folder):
                say(f"{name}: from cache {folder}")
                continue
            why = why_new_entry(folder, key, f"{folder_name(assistant.model)}-*")
            train_link(link_config(config, contents, index), folder, f"{name} ", why)
            remember_key(folder, key)


def link_runs(config: RunConfig, contents: DataContents | None) -> tuple[Path | None, ...]:
    """Each link's run folder in the cache, in order (``None`` for one given by its weights file)."""
    return tuple(
        None if assistant.checkpoint else link_folder(config, contents, index)
        for index, assistant in enumerate(config.teacher.assistants)
    )


def _trained(folder: Path) -> bool:
    return (folder / "summary.json").is_file() and (folder / WEIGHTS).is_file()


def _teacher_of_link(config: RunConfig, contents: DataContents | None, index: int) -> TeacherConfig:
    """The teacher of assistant ``index`` (``len(assistants)``: of the student)."""
    teacher = config.teacher
    if index == 0:
        return dataclasses.replace(teacher, assistants=[])
    before: AssistantConfig = teacher.assistants[index - 1]
    weights = before.checkpoint or str(link_folder(config, contents, index - 1) / WEIGHTS)
    return TeacherConfig(
        model=before.model,
        kwargs=dict(before.kwargs),
        checkpoint=weights,
        cache=teacher.cache,
        cache_topk=teacher.cache_topk,
    )


def _key(config: RunConfig, contents: DataContents | None, index: int) -> dict[str, Any]:
    """Everything that shapes assistant ``index``, and nothing else."""
    assistant, run = config.teacher.assistants[index], link_config(config, contents, index)
    data = {k: v for k, v in as_dict(config.data).items() if k not in ("root", "num_workers", "eval_batch_size")}
    return {
        "format": FORMAT,
        "model": assistant.model,
        "kwargs": assistant.kwargs,
        "teacher": _teacher_part(config, contents, index),
        "methods": list(config.methods),
        "method_configs": {name: as_dict(c) for name, c in config.method_configs.items()},
        "data": data | {"contents": contents.train if contents is not None else None},
        "optim": as_dict(config.optim),
        "train": {k: v for k, v in as_dict(run.train).items() if k not in MACHINE_SETTINGS},
    }


def _teacher_part(config: RunConfig, contents: DataContents | None, index: int) -> Any:
    """What the link's teacher is: the link before it (its key, or its given file's digest), or the
    run's teacher (what it is trained from, when kdzoo trains it; its file, or its pretrained weights'
    name, when given)."""
    if index > 0:
        before = config.teacher.assistants[index - 1]
        if before.checkpoint:
            return {"checkpoint": _digest(before.checkpoint, f"teacher.assistants[{index - 1}].checkpoint")}
        return _key(config, contents, index - 1)
    first = dataclasses.replace(config, teacher=_teacher_of_link(config, contents, 0))
    t = first.teacher
    shown = {"model": t.model, "kwargs": t.kwargs, "cache": t.cache, "cache_topk": t.cache_topk, "img_size": t.img_size}
    if t.checkpoint:
        return shown | {"checkpoint": _digest(t.checkpoint, "teacher.checkpoint")}
    if t.train.epochs > 0:  # kdzoo trains it: known before it exists
        return shown | {"trained": teachers.teacher_key(first, contents)}
    return shown | {"pretrained": t.pretrained}


def _digest(path: str, key: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise KdzooError(f"config key '{key}': {path} is not a file; give the weights file of a trained model")
    stat = file.stat()
    return _digest_of(str(file.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _digest_of(path: str, mtime_ns: int, size: int) -> str:
    """A weights file's digest, read once per version of the file: every link's key holds the keys of
    the links before it, so a chain's keys name a given file several times as the run is built."""
    return teachers.file_digest(Path(path))
