"""``kdzoo bench``: the cost of a distillation step against its floor, measured in one process.

The floor is what no distillation step can undercut while the teacher runs: the teacher's forward
pass under ``inference_mode`` plus the student's forward, backward and optimizer step with plain
cross-entropy, in a minimal hand-written loop. The student-only step (no teacher at all) bounds
what a teacher-output cache can reach. kdzoo's variants run the engine's real training step
(``Trainer.train_step``). Variants are interleaved round by round after a warm-up, and the table
reports medians of per-round ratios, so machine noise hits every variant alike.
"""

from __future__ import annotations

import copy
import ctypes
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kdzoo.config import load_config
from kdzoo.data import DataBundle, Normalisation, TensorBatches
from kdzoo.models import create_model
from kdzoo.plugins import registry

Step = Callable[[], None]


@dataclass
class Variant:
    name: str
    step: Step


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_step_memory_mb(step: Step, steps: int = 3) -> float:
    """Resident high-water mark reached during ``steps`` steps, above the resident size before them."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed blocks back so the baseline is honest
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        return float("nan")
    before = _rss_mb("VmRSS")
    for _ in range(steps):
        step()
    return _rss_mb("VmHWM") - before


def _optimizer(student) -> torch.optim.Optimizer:
    """The optimizer kdzoo's variants use too (the config's defaults), so only distillation differs."""
    from kdzoo.config import OptimConfig
    from kdzoo.optim import build_optimizer

    return build_optimizer(OptimConfig(lr=0.01), student.parameters())


def floor_step(teacher, student, x, y) -> Step:
    optimizer = _optimizer(student)

    def step() -> None:
        with torch.inference_mode():
            teacher(x)
        loss = F.cross_entropy(student(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def student_only_step(student, x, y) -> Step:
    optimizer = _optimizer(student)

    def step() -> None:
        loss = F.cross_entropy(student(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def kdzoo_step(methods: list[str], teacher, student, x, y, settings: list[str], tmp: Path) -> Step:
    """The engine's own training step for ``methods`` (built exactly as ``kdzoo run`` builds it)."""
    from kdzoo.engine import Trainer

    reg = registry()
    cfg = load_config([], [*settings, "train.device=cpu"], methods, reg.config_classes())
    norm = Normalisation((0.0,) * x.shape[1], (1.0,) * x.shape[1])
    batches = TensorBatches(x, y, len(y), x.shape[-1], norm, train=True)
    data = DataBundle("bench", batches, batches, int(student.num_classes), int(x.shape[1]))
    trainer = Trainer(
        cfg, reg, tmp / "+".join(methods), teacher=teacher, student=student, data=data, show_progress=False
    )
    stage = trainer.stages[-1]  # the main stage (FitNets' two-stage variant would start with its hint stage)
    optimizer, scheduler = trainer.optimizer_for(stage)
    trainer.student.train()
    trainer.modules.train()

    def step() -> None:
        trainer.train_step(x, y, stage, 0, 0.5, optimizer, scheduler)

    return step


def measure(variants: list[Variant], rounds: int, steps: int, warmup: int) -> dict[str, dict[str, float]]:
    for variant in variants:
        for _ in range(warmup):
            variant.step()
    per_round: dict[str, list[float]] = {v.name: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            start = time.perf_counter()
            for _ in range(steps):
                variant.step()
            per_round[variant.name].append((time.perf_counter() - start) / steps)
    floor = per_round[variants[0].name]
    out = {}
    for variant in variants:
        times = per_round[variant.name]
        out[variant.name] = {
            "step_ms": 1000 * statistics.median(times),
            "ratio": statistics.median(t / f for t, f in zip(times, floor, strict=True)),
            "peak_mb": peak_step_memory_mb(variant.step),
        }
    return out


def run_bench(
    teacher_name: str,
    student_name: str,
    methods: list[str],
    img_size: int = 32,
    batch: int = 64,
    rounds: int = 7,
    steps: int = 3,
    warmup: int = 2,
    options: list[str] | None = None,
    tmp: Path = Path("runs/bench"),
    teacher_kwargs: dict[str, Any] | None = None,
    student_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure the floor, the student-only step and kdzoo's step for each method stack."""
    from kdzoo.config import ModelConfig

    torch.manual_seed(0)
    num_classes, in_chans = 100, 3
    teacher = create_model(ModelConfig(teacher_name, kwargs=teacher_kwargs or {}), "teacher", num_classes, in_chans)
    student = create_model(ModelConfig(student_name, kwargs=student_kwargs or {}), "student", num_classes, in_chans)
    teacher.requires_grad_(False).eval()
    x = torch.randn(batch, in_chans, img_size, img_size)
    y = torch.randint(0, num_classes, (batch,))
    base = [f"data.img_size={img_size}", f"data.batch_size={batch}", "optim.lr=0.01"]
    variants = [
        Variant("floor", floor_step(teacher, copy.deepcopy(student).train(), x, y)),
        Variant("student only", student_only_step(copy.deepcopy(student).train(), x, y)),
    ]
    for stack in methods:
        names = stack.split("+")
        variants.append(Variant(f"kdzoo {stack}", kdzoo_step(names, teacher, copy.deepcopy(student), x, y, base, tmp)))
    for option in options or []:
        extra = {
            "channels_last": ["train.channels_last=true"],
            "bf16": ["train.precision=bf16"],
            "compile": ["train.compile=true"],
        }[option]
        stack = methods[0]
        variants.append(
            Variant(
                f"kdzoo {stack} [{option}]",
                kdzoo_step(stack.split("+"), copy.deepcopy(teacher), copy.deepcopy(student), x, y, base + extra, tmp),
            )
        )
    results = measure(variants, rounds, steps, warmup)
    return {
        "pair": f"{teacher_name} -> {student_name}",
        "img_size": img_size,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "results": results,
    }


def format_table(report: dict[str, Any]) -> str:
    rows = report["results"]
    floor_mb = rows["floor"]["peak_mb"]
    lines = [
        f"{report['pair']}, batch {report['batch']}, {report['img_size']} px, {report['threads']} threads, "
        f"median of {report['rounds']} interleaved rounds",
        "",
        "| variant | step ms | x floor | images/s | step peak MB | x floor's peak |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        ips = report["batch"] / (r["step_ms"] / 1000)
        lines.append(
            f"| {name} | {r['step_ms']:.1f} | {r['ratio']:.3f} | {ips:.0f} | {r['peak_mb']:.0f} | "
            f"{r['peak_mb'] / floor_mb:.2f} |"
        )
    return "\n".join(lines)
