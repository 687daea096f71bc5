"""``kdzoo bench``: the cost of a distillation step against its floor, measured in one process.

The floor is what no distillation step can undercut while the teacher runs: the teacher's forward
pass under ``inference_mode`` plus the student's forward, backward and optimizer step with plain
cross-entropy, in a minimal hand-written loop. The student-only step (no teacher at all) bounds
what a teacher-output cache can reach. kdzoo's variants run the engine's real training step (the
run's :class:`~kdzoo.engine.step.Step`). Variants are interleaved round by round after a warm-up, and
the table reports medians of per-round ratios, so machine noise hits every variant alike.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kdzoo.api import Batch, Stage, When
from kdzoo.config import load_config
from kdzoo.data import DataBundle, Normalisation, TensorBatches
from kdzoo.errors import KdzooError
from kdzoo.models import create_model
from kdzoo.registry import registry
from kdzoo.tools.bench_memory import Step, resident_peak_mb, tensor_peak_mb


@dataclass
class Variant:
    name: str
    step: Step
    optimizer: torch.optim.Optimizer

    def free_gradients(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)


def _optimizer(student) -> torch.optim.Optimizer:
    """The optimizer kdzoo's variants use too (the config's defaults), so only distillation differs."""
    from kdzoo.config import OptimConfig
    from kdzoo.engine.step import build_optimizer

    return build_optimizer(OptimConfig(lr=0.01), student.parameters())


# What each ``--options`` entry changes: kdzoo's config settings, and the same thing done by hand in
# the floor's minimal loop (memory format, autocast dtype) so each option is compared like for like.
OPTIONS: dict[str, list[str]] = {
    "channels_last": ["train.channels_last=true"],
    "bf16": ["train.precision=bf16"],
    "fp16": ["train.precision=fp16"],
    "compile": ["train.compile=true"],
    "compile_objective": ["train.compile=true", "train.compile_objective=true"],
    "reduce_overhead": ["train.compile=true", "train.compile_objective=true", "train.compile_mode=reduce-overhead"],
}
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
# the floor in the same mode as kdzoo's compiled variants: its models compiled alike (it has no objective)
_COMPILED_FLOOR = {"compile": "default", "compile_objective": "default", "reduce_overhead": "reduce-overhead"}


Built = tuple[Step, torch.optim.Optimizer]  # a variant's step and the optimizer holding its gradients


def floor_step(teacher, student, x, y, option: str | None = None) -> Built:
    """The minimal hand-written loop: the teacher's forward (none when ``teacher`` is None), then the
    student's forward, backward and optimizer step with plain cross-entropy."""
    optimizer = _optimizer(student)
    dtype = _AUTOCAST.get(option or "")
    # fp16 needs loss scaling against underflow exactly as kdzoo's step has it; a disabled scaler is free
    scaler = torch.amp.GradScaler(x.device.type, enabled=option == "fp16")
    if option == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        for model in (teacher, student):
            if model is not None:
                model.to(memory_format=torch.channels_last)
    autocast = (lambda: torch.autocast(x.device.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    if option in _COMPILED_FLOOR:
        mode = _COMPILED_FLOOR[option]
        teacher = None if teacher is None else torch.compile(teacher, mode=mode)
        student = torch.compile(student, mode=mode)

    def step() -> None:
        with autocast():
            if teacher is not None:
                with torch.inference_mode():
                    teacher(x)
            loss = F.cross_entropy(student(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step, optimizer


def student_only_step(student, x, y) -> Built:
    return floor_step(None, student, x, y)


def distilling_stage(stages: list[Stage]) -> Stage:
    """The stage a method distils in: the last one that switches on a term besides ``ce`` (AB's and
    FSP's ``init`` stage, whose main stage is plain CE; every other method's last stage)."""
    return next((s for s in reversed(stages) if s.losses is None or s.losses - {"ce"}), stages[-1])


class _BenchBatches(TensorBatches):
    """The bench's one batch, standing for a training set of ``train_samples`` (what per-sample state,
    CRD's memory bank, is sized for), the batch's labels repeated over it."""

    def __init__(self, x, y, train_samples: int):
        super().__init__(x, y, len(y), x.shape[-1], Normalisation((0.0,) * x.shape[1], (1.0,) * x.shape[1]), True)
        self.train_samples = max(train_samples, len(y))

    @property
    def num_samples(self) -> int:
        return self.train_samples

    def class_labels(self) -> torch.Tensor:
        return self.labels.cpu().repeat(self.train_samples // len(self.labels) + 1)[: self.train_samples]


def kdzoo_step(
    methods: list[str], teacher, student, x, y, settings: list[str], tmp: Path, train_samples: int = 50_000
) -> Built:
    """The engine's own training step for ``methods`` (built exactly as ``kdzoo run`` builds it), on
    a batch standing for ``train_samples`` training samples (CIFAR's 50,000 by default)."""
    from kdzoo.engine import build_trainer

    reg = registry()
    cfg = load_config([], [*settings, f"train.device={x.device}"], methods, reg.config_classes())
    batches = _BenchBatches(x, y, train_samples)
    data = DataBundle("bench", batches, batches, int(student.num_classes), int(x.shape[1]))
    trainer = build_trainer(
        cfg, reg, tmp / "+".join(methods), teacher=teacher, student=student, data=data, show_progress=False
    )
    stage = distilling_stage(trainer.stages)
    trainer.step.begin(stage)
    trainer.student.train()
    trainer.modules.train()

    # the batch's samples are spread over the training set, each labelled as the repeated labels say
    indices = torch.arange(len(y)) + len(y) * torch.randint(0, batches.num_samples // len(y), (len(y),))
    batch, when = Batch(x, y, indices), When(stage, 0, 0.5)

    def step() -> None:
        trainer.step(batch, when)

    return step, trainer.step.optimizer


def measure(
    variants: list[Variant], rounds: int, steps: int, warmup: int, device: torch.device = torch.device("cpu")
) -> dict[str, dict[str, float]]:
    # CUDA runs asynchronously: wait for the queued work before reading the clock, never inside a step
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for variant in variants:
        for _ in range(warmup):
            variant.step()
    per_round: dict[str, list[float]] = {v.name: [] for v in variants}
    for _ in range(rounds):
        for variant in variants:
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                variant.step()
            sync()
            per_round[variant.name].append((time.perf_counter() - start) / steps)
    floor = per_round[variants[0].name]
    out = {}
    for variant in variants:
        times = per_round[variant.name]
        out[variant.name] = {
            "step_ms": 1000 * statistics.median(times),
            "ratio": _median_ratio(times, floor),
            "round_ms": [1000 * t for t in times],
            "peak_mb": tensor_peak_mb(variant.step, device, prepare=variant.free_gradients),
            "resident_peak_mb": resident_peak_mb(variant.step, device),
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
    device: str = "cpu",
    torchdistill: bool = False,
) -> dict[str, Any]:
    """Measure the floor, the student-only step and kdzoo's step for each method stack.

    Each entry of ``options`` adds every stack with that option and the floor run in the same mode
    (``vs_same_mode_floor``: each such step over that floor's). ``torchdistill`` adds torchdistill's
    own step for every stack it has too.
    """
    from kdzoo.config import ModelConfig
    from kdzoo.engine import pick_device

    unknown = [o for o in options or [] if o not in OPTIONS]
    if unknown:
        raise KdzooError(f"bench option '{unknown[0]}' is unknown; choose from {', '.join(OPTIONS)}")
    where = pick_device(device)
    torch.manual_seed(0)
    num_classes, in_chans = 100, 3
    teacher = create_model(ModelConfig(teacher_name, kwargs=teacher_kwargs or {}), "teacher", num_classes, in_chans)
    student = create_model(ModelConfig(student_name, kwargs=student_kwargs or {}), "student", num_classes, in_chans)
    teacher.requires_grad_(False).eval().to(where)
    student.to(where)
    x = torch.randn(batch, in_chans, img_size, img_size, device=where)
    y = torch.randint(0, num_classes, (batch,), device=where)
    base = [f"data.img_size={img_size}", f"data.batch_size={batch}", "optim.lr=0.01"]
    variants = [
        Variant("floor", *floor_step(teacher, copy.deepcopy(student).train(), x, y)),
        Variant("student only", *student_only_step(copy.deepcopy(student).train(), x, y)),
    ]
    for stack in methods:
        names = stack.split("+")
        built = kdzoo_step(names, teacher, copy.deepcopy(student), x, y, base, tmp)
        variants.append(Variant(f"kdzoo {stack}", *built))
    if torchdistill:
        variants += _torchdistill_variants(methods, teacher, student, x, y)
    for option in options or []:
        # every option's floor runs in the same mode (compiled models for the compile options), so no
        # ratio compares a compiled kdzoo step with an eager floor
        hand = floor_step(copy.deepcopy(teacher), copy.deepcopy(student).train(), x, y, option)
        variants.append(Variant(f"floor [{option}]", *hand))
        for stack in methods:
            kdzoo = kdzoo_step(
                stack.split("+"), copy.deepcopy(teacher), copy.deepcopy(student), x, y, base + OPTIONS[option], tmp
            )
            variants.append(Variant(f"kdzoo {stack} [{option}]", *kdzoo))
    results = measure(variants, rounds, steps, warmup, where)
    return {
        # each option's kdzoo step against the floor run in the same mode (compiled, bf16...)
        "vs_same_mode_floor": {
            f"{stack} [{option}]": _median_ratio(
                results[f"kdzoo {stack} [{option}]"]["round_ms"], results[f"floor [{option}]"]["round_ms"]
            )
            for option in options or []
            for stack in methods
        },
        "vs_torchdistill": {
            stack: _median_ratio(results[f"kdzoo {stack}"]["round_ms"], results[f"torchdistill {stack}"]["round_ms"])
            for stack in methods
            if f"torchdistill {stack}" in results
        },
        "pair": f"{teacher_name} -> {student_name}",
        "img_size": img_size,
        "batch": batch,
        "device": _device_name(where),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rounds": rounds,
        "results": results,
    }


def _torchdistill_variants(methods: list[str], teacher, student, x, y) -> list[Variant]:
    # the adapter knows how each kdzoo method maps onto torchdistill: it lives beside kdzoo, not in its core
    adapter = importlib.import_module("kdzoo_benchmarks.torchdistill")
    torchdistill_available, torchdistill_step = adapter.torchdistill_available, adapter.torchdistill_step
    torchdistill_supports = adapter.torchdistill_supports
    if not torchdistill_available():
        raise KdzooError("--torchdistill needs torchdistill: pip install 'kdzoo[bench]'")
    variants = []
    for stack in methods:
        if torchdistill_supports(stack):
            step = torchdistill_step(stack, teacher, copy.deepcopy(student), x, y)
            variants.append(Variant(f"torchdistill {stack}", step, step.box.optimizer))
    return variants


def _median_ratio(times: list[float], base: list[float]) -> float:
    """The median over rounds of each round's time ratio (noise within a round hits both alike)."""
    return statistics.median(a / b for a, b in zip(times, base, strict=True))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu, {torch.get_num_threads()} threads"


def format_table(report: dict[str, Any]) -> str:
    rows = report["results"]
    floor = rows["floor"]
    lines = [
        f"{report['pair']}, batch {report['batch']}, {report['img_size']} px, {report['device']}, "
        f"median of {report['rounds']} interleaved rounds",
        "",
        "| variant | step ms | x floor | images/s | tensor peak MB | x floor's | resident peak MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        ips = report["batch"] / (r["step_ms"] / 1000)
        lines.append(
            f"| {name} | {r['step_ms']:.1f} | {r['ratio']:.3f} | {ips:.0f} | {r['peak_mb']:.1f} | "
            f"{r['peak_mb'] / floor['peak_mb']:.3f} | {r['resident_peak_mb']:.0f} |"
        )
    if report.get("vs_same_mode_floor"):
        ratios = ", ".join(f"{variant} {ratio:.3f}" for variant, ratio in report["vs_same_mode_floor"].items())
        lines += ["", f"kdzoo step time / the floor's in the same mode: {ratios}"]
    if report.get("vs_torchdistill"):
        ratios = ", ".join(f"{stack} {ratio:.3f}" for stack, ratio in report["vs_torchdistill"].items())
        lines += ["", f"kdzoo step time / torchdistill's (median of per-round ratios; < 1: kdzoo faster): {ratios}"]
    return "\n".join(lines)
