"""What a finished run leaves besides its checkpoint: the student alone, and the summary.

Every file written here (and by ``kdzoo export``) is written whole or not at all: a temp file beside
it, fsync, rename (:func:`write_atomic`), so a kill mid-write leaves the previous file; a full disk is
one line naming the file and the bytes it needs, and leaves no part of a file behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdzoo.checkpoint import disk_full, write_bytes_atomic
from kdzoo.config import RunConfig
from kdzoo.engine.state import RunClock
from kdzoo.errors import KdzooError
from kdzoo.reporting.records import AssistantResult, RunSummary, StageResult, TeacherSource


def write_atomic(path: Path, data: bytes | str) -> None:
    """``path`` holds all of ``data`` or what it held before, never a part (temp file, fsync, rename);
    a full disk (checked before writing, and caught while writing) or any failed write is one line."""
    payload = data.encode() if isinstance(data, str) else data
    try:
        write_bytes_atomic(payload, path)
    except OSError as exc:  # a full disk is already one line (KdzooError); any other failure is made one here
        raise write_failed(path, exc) from None


def publish_atomic(written: Path, path: Path, size_hint: int | None = None) -> None:
    """``written`` (a complete temp file beside ``path``, made by another library's writer) becomes
    ``path``: fsync, then rename, so ``path`` is never seen half-written; ``written`` never stays."""
    try:
        with open(written, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(written, path)
    except OSError as exc:
        raise write_failed(path, exc, size_hint) from None
    finally:
        written.unlink(missing_ok=True)


def write_failed(path: Path, exc: OSError, size: int | None = None) -> KdzooError:
    """The one line for a write to ``path`` that failed with ``exc``: a full disk names the bytes needed
    (``size``, when known) and what is free; either way, whether a previous ``path`` is intact."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return KdzooError(disk_full(path, size, previous=path.exists(), free=_free_bytes(path.parent)))
    kept = "the previous file is intact" if path.exists() else "nothing was written"
    return KdzooError(f"could not write {path} ({exc.strerror or exc}); {kept}")


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


#: the deployed network's weights a run writes: at the end, at its best validation epoch, its EMA's
STUDENT_FILES = {"last": "student.safetensors", "best": "student_best.safetensors", "ema": "student_ema.safetensors"}


def kept_student(run_dir: Path, which: str) -> Path:
    """The run's ``which`` student file (:data:`STUDENT_FILES`), or one line saying why it has none."""
    path = run_dir / STUDENT_FILES[which]
    if not path.is_file():
        why = {"ema": "the run kept no EMA (train.ema=true)", "best": "no epoch has ended yet"}
        raise KdzooError(
            f"{run_dir} has no {path.name}: {why.get(which, 'the run has not finished (resume it first)')}"
        )
    return path


def export_student(
    student: nn.Module,
    config: RunConfig,
    num_classes: int,
    in_chans: int,
    run_dir: Path,
    deployed_by: str | None = None,
    which: str = "last",
    inputs: dict[str, Any] | None = None,
) -> None:
    """The deployed network as a safetensors file + how to load it: the student alone (a timm model,
    no method modules), or, when a method changes what is deployed (``deployed_by``), the network it
    built around the student (SimKD: + projector + teacher classifier), which ``kdzoo eval`` and
    :func:`kdzoo.load_student` rebuild through that method. ``which``: the last student
    (``student.safetensors``), the best epoch's or the EMA's (:data:`STUDENT_FILES`), loaded the same way.
    ``inputs``: how images became the student's input in training (mean, std, size, interpolation, crop),
    recorded in ``student.json`` for what is exported from it (the hub folder's ``pretrained_cfg``)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    # written as bytes through open(): the file gets the same permissions as the run's other files
    write_atomic(run_dir / STUDENT_FILES[which], save(state, metadata={"format": "pt"}))
    if which != "last":  # student.json says how to load all three
        return
    kwargs = {"num_classes": num_classes, "in_chans": in_chans, **config.student.kwargs}
    model = config.student.model
    if deployed_by is None:
        load = (
            f"timm.create_model({model!r}, pretrained=True, "
            + "".join(f"{k}={v!r}, " for k, v in kwargs.items())
            + f"pretrained_cfg_overlay=dict(file='student.safetensors', num_classes={kwargs['num_classes']}))"
        )
    else:
        load = f"kdzoo.load_student({str(run_dir / 'student.safetensors')!r})"
    record = {"model": model, "kwargs": kwargs, "deployed_by": deployed_by, "load": load, "input": inputs}
    write_atomic(run_dir / "student.json", json.dumps(record, indent=2))


def count_flops(model: nn.Module, shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of one input of ``shape`` (C, H, W)."""
    from torch.utils.flop_counter import FlopCounterMode

    weight = next(iter(model.parameters()))
    was_training = model.training
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.eval()(torch.randn(1, *shape, device=weight.device, dtype=weight.dtype))
    model.train(was_training)
    return int(counter.get_total_flops())


def deployed_costs(model: nn.Module, in_chans: int, img_size: int, deployed_by: str | None) -> dict[str, Any]:
    """What the deployed network costs: its parameters (a reused teacher classifier included) and
    FLOPs per image."""
    return {
        "network": "student" if deployed_by is None else f"student as {deployed_by} deploys it",
        "params": sum(p.numel() for p in model.parameters()),
        "flops": count_flops(model, (in_chans, img_size, img_size)),
    }


def summarise(
    *,
    config: RunConfig,
    history: list[dict[str, Any]],
    stage_names: list[str],
    last_val: dict[str, float],
    teacher: str | None,
    teacher_source: TeacherSource | None,
    teacher_metrics: dict[str, float] | None,
    data_name: str,
    clock: RunClock,
    run_dir: Path,
    deployed: dict[str, Any],
    teacher_cache_cpu_s: float | None = None,
    method_sources: dict[str, dict[str, str]] | None = None,
    ema_val: dict[str, float] | None = None,
    assistants: list[AssistantResult] | None = None,
) -> RunSummary:
    """``summary.json``: teacher and student accuracy, per stage, wall and CPU time, the deployed network's cost."""
    return RunSummary(
        methods=list(config.methods),
        teacher=teacher,
        teacher_source=teacher_source,
        student=config.student.model,
        data=data_name,
        teacher_top1=None if teacher_metrics is None else teacher_metrics["top1"],
        student_top1=last_val["top1"],
        student_best_top1=max((r["val"]["top1"] for r in history), default=last_val["top1"]),
        student_best_epoch=best_epoch(history),
        student_ema_top1=None if ema_val is None else ema_val["top1"],
        epochs=len(history),
        stages=[
            StageResult(name=name, top1=records[-1]["val"]["top1"])
            for i, name in enumerate(stage_names)
            if (records := [r for r in history if r["stage_index"] == i])
        ],
        wall_time_s=round(clock.wall(), 2),
        cpu_time_s=round(clock.cpu(), 2),
        torch_threads=torch.get_num_threads(),
        teacher_cache_cpu_s=teacher_cache_cpu_s,
        run_dir=str(run_dir),
        deployed=deployed,
        method_sources=dict(method_sources or {}),
        assistants=list(assistants or []),
    )


def best_epoch(history: list[dict[str, Any]]) -> int | None:
    """The run's epoch (from 1) of the best validation top-1: the first of equals (a later equal one is
    no better)."""
    if not history:
        return None
    best = max(history, key=lambda r: (r["val"]["top1"], -r["global_epoch"]))
    return int(best["global_epoch"])
