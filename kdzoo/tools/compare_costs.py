"""What ``kdzoo compare`` measures beside accuracy: the teacher's and student's parameters, FLOPs and
latency, each method's best run deployed (ONNX, int8), and how the report was made (command, versions,
hardware)."""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdzoo.config import RunConfig
from kdzoo.data import DataBundle, load_data
from kdzoo.engine.export import count_flops
from kdzoo.errors import error_line
from kdzoo.models import create_model
from kdzoo.tools.leaderboard import SCRATCH, RunResult, threads_text
from kdzoo.tools.timing import Measured, interleaved


def deploy_best_runs(results: list[RunResult], out: Path, echo: Callable[[str], None]) -> dict[str, Any]:
    """Each method's best run (highest last-epoch top-1 over seeds) exported to ONNX and int8, and its
    deploy trade-off table measured (``kdzoo export --format onnx --quantize int8``); a method whose
    export fails (onnxruntime disagreeing with PyTorch, say) gets ``{"seed", "error"}`` instead. The
    runs share one teacher, measured once (with the first method's run) and in every table alike,
    scratch's included; scratch comes last, as it has no teacher to measure."""
    from kdzoo.tools.deploy import export_onnx
    from kdzoo.tools.int8 import int8_is_current, quantize_int8
    from kdzoo.tools.tradeoff import deploy_table

    tables, teacher_rows = {}, None
    for method in sorted(dict.fromkeys(r.method for r in results), key=lambda m: m == SCRATCH):
        best = max((r for r in results if r.method == method), key=lambda r: r.last_top1)
        run_dir = out / "runs" / f"{method}-seed{best.seed}"
        echo(f"deploy: {method} seed {best.seed}: ONNX, int8 and their costs")
        try:
            if not int8_is_current(run_dir):
                export_onnx(run_dir)
                quantize_int8(run_dir)
            table = deploy_table(run_dir, teacher_rows)
        except Exception as exc:  # an export that fails its check costs its own row, not every run's report
            why = error_line(exc)
            echo(f"deploy: {method} seed {best.seed}: failed: {why}")
            tables[method] = {"seed": best.seed, "error": why}
            continue
        tables[method] = {"seed": best.seed, **table}
        teacher_rows = teacher_rows or [row for row in table["rows"] if row["model"] == "teacher"] or None
    return tables


LATENCY_ROUNDS, LATENCY_REPEATS = 6, 5  # interleaved rounds of 5 timed calls each, per model (30 in all)


def _latencies(models: dict[str, nn.Module], shape: tuple[int, ...]) -> dict[str, Measured]:
    """Each model's median latency per round at batch 1, the models taking turns (:func:`interleaved`)."""
    x = torch.randn(1, *shape)
    calls = {role: functools.partial(model, x) for role, model in models.items()}
    return interleaved(calls, LATENCY_ROUNDS, LATENCY_REPEATS, warmup=5)


def model_costs(config: RunConfig, teacher_file: str | None, data: DataBundle | None = None) -> dict[str, Any]:
    """Parameters, FLOPs per image and measured CPU latency per image of teacher and student (``data``:
    the dataset of ``config``, if it was read already). The speed-up is the median of the rounds' ratios,
    with their range and spread: a busy machine shows as ratios that disagree, and is marked in the report."""
    data = data if data is not None else load_data(config.data, config.train.seed)
    shape = (data.in_chans, config.data.img_size, config.data.img_size)
    costs: dict[str, Any] = {}
    models = {}
    teacher_cfg = dataclasses.replace(config.teacher, checkpoint=teacher_file, pretrained=False)
    for role, cfg in (("teacher", teacher_cfg), ("student", config.student)):
        cfg = dataclasses.replace(cfg, pretrained=False) if role == "student" else cfg
        models[role] = create_model(cfg, role, data.num_classes, data.in_chans).eval()
        costs[role] = {
            "model": cfg.model,
            "params": sum(p.numel() for p in models[role].parameters()),
            "flops": count_flops(models[role], shape),
        }
    latencies = _latencies(models, shape)
    for role, latency in latencies.items():
        costs[role].update(latency_ms=latency.median, latency_spread=latency.spread)
    t, s = costs["teacher"], costs["student"]
    costs["compression"] = t["params"] / s["params"]
    costs["flops_ratio"] = t["flops"] / max(s["flops"], 1)
    costs.update(speedup_figures(latencies["teacher"], latencies["student"]))
    return costs


def speedup_figures(teacher: Measured, student: Measured) -> dict[str, Any]:
    """The teacher's latency over the student's, round by round (the rounds interleaved: each ratio compares
    the same moments): their median, range and spread."""
    ratios = Measured([t / s for t, s in zip(teacher.samples, student.samples, strict=True)])
    return {
        "speedup": ratios.median,
        "speedup_range": [min(ratios.samples), max(ratios.samples)],
        "speedup_spread": ratios.spread,
        "latency_rounds": len(ratios.samples),
    }


def meta(
    methods, files, overrides, seeds, deploy: bool = False, train: bool = True, run_threads: list[int | None] = ()
) -> dict[str, Any]:
    """How the report was made: its command, versions and hardware, with the threads the runs trained on
    (``run_threads``, from their summaries) beside those of this process, which measured the latencies."""
    import timm

    from kdzoo import __version__

    command = ["kdzoo", "compare", "--methods", ",".join(methods), "--seeds", str(len(seeds))]
    command += ["--deploy"] if deploy else []
    command += [] if train else ["--report-only"]
    command += [a for f in files for a in ("--config", f)] + [a for o in overrides for a in ("--set", o)]
    device = f"CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "CPU only"
    return {
        "command": " ".join(command),
        "versions": {
            "kdzoo": __version__,
            "torch": torch.__version__,
            "timm": timm.__version__,
            "python": platform.python_version(),
            **(_deploy_versions() if deploy else {}),
        },
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{_training_threads(run_threads)}latencies measured with torch on "
        f"{threads_text(torch.get_num_threads())}, {device}",
    }


def _training_threads(run_threads: list[int | None]) -> str:
    """'runs trained with torch on 1 thread, ' from the runs' summaries ('' when none recorded it: runs
    from before kdzoo recorded it)."""
    known = sorted({t for t in run_threads if t})
    if not known:
        return ""
    text = threads_text(known[0]) if len(known) == 1 else f"{known[0]} to {known[-1]} threads"
    unknown = " (some runs did not record it)" if None in run_threads else ""
    return f"runs trained with torch on {text}{unknown}, "


def _deploy_versions() -> dict[str, str]:
    """The runtime and exporter that measured the deployed students (installed: --deploy checked it)."""
    import importlib.metadata

    return {name: importlib.metadata.version(name) for name in ("onnxruntime", "onnx")}
