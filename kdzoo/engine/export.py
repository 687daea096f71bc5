"""What a finished run leaves besides its checkpoint: the student alone, and the summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from kdzoo.config import RunConfig


def export_student(student: nn.Module, config: RunConfig, num_classes: int, in_chans: int, run_dir: Path) -> None:
    """The student alone (no method modules) as a timm-loadable safetensors file + how to load it."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    # written as bytes through open(): the file gets the same permissions as the run's other files
    (run_dir / "student.safetensors").write_bytes(save(state, metadata={"format": "pt"}))
    kwargs = {"num_classes": num_classes, "in_chans": in_chans, **config.student.kwargs}
    model = config.student.model
    load = (
        f"timm.create_model({model!r}, pretrained=True, "
        + "".join(f"{k}={v!r}, " for k, v in kwargs.items())
        + f"pretrained_cfg_overlay=dict(file='student.safetensors', num_classes={kwargs['num_classes']}))"
    )
    (run_dir / "student.json").write_text(json.dumps({"model": model, "kwargs": kwargs, "load": load}, indent=2))


def summarise(
    config: RunConfig,
    history: list[dict[str, Any]],
    stage_names: list[str],
    last_val: dict[str, float],
    teacher: str | None,
    teacher_metrics: dict[str, float] | None,
    data_name: str,
    wall: float,
    run_dir: Path,
) -> dict[str, Any]:
    """``summary.json``: teacher and student accuracy, per stage, wall time."""
    return {
        "methods": config.methods,
        "teacher": teacher,
        "student": config.student.model,
        "data": data_name,
        "teacher_top1": None if teacher_metrics is None else teacher_metrics["top1"],
        "student_top1": last_val["top1"],
        "student_best_top1": max((r["val"]["top1"] for r in history), default=last_val["top1"]),
        "epochs": len(history),
        "stages": [
            {"name": name, "top1": records[-1]["val"]["top1"]}
            for i, name in enumerate(stage_names)
            if (records := [r for r in history if r["stage_index"] == i])
        ],
        "wall_time_s": round(wall, 2),
        "run_dir": str(run_dir),
    }
