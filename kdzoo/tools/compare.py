"""``kdzoo compare``: every method against the student trained from scratch, same pair, data and seeds.

The teacher is trained (or loaded) once and shared by every run. Each (method, seed) run is a
normal run directory under ``<out>/runs/``; a finished one (``summary.json``) is never redone and an
interrupted one resumes from its checkpoint, so the whole comparison can be stopped and restarted.
Results: ``results.md``, ``results.csv``, ``results.png`` and ``results.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import platform
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdzoo.config import RunConfig, config_from_dict, load_config
from kdzoo.data import load_data
from kdzoo.engine.export import count_flops
from kdzoo.engine.locking import RunDirLock
from kdzoo.errors import KdzooError
from kdzoo.models import create_model
from kdzoo.registry import Registry
from kdzoo.tools.tradeoff import median_ms

SCRATCH = "scratch"


@dataclasses.dataclass
class RunResult:
    method: str
    seed: int
    last_top1: float
    best_top1: float
    wall_time_s: float
    curve: list[float]


def run_configs(
    methods: list[str], files: list[str], overrides: list[str], seeds: list[int], out: Path, registry: Registry
) -> dict[tuple[str, int], RunConfig]:
    """One config per (method, seed); ``scratch`` is the student alone, with the labels only."""
    configs = {}
    for method in [SCRATCH, *methods]:
        for seed in seeds:
            sets = [
                *overrides,
                f"train.seed={seed}",
                f"train.out_dir={out / 'runs'}",
                f"train.name={method}-seed{seed}",
            ]
            cfg = load_config(files, sets, [methods[0] if method == SCRATCH else method], registry.config_classes())
            if method == SCRATCH:
                cfg = dataclasses.replace(cfg, methods=[], method_configs={})
            configs[(method, seed)] = cfg
    return configs


def shared_teacher(config: RunConfig, registry: Registry, echo: Callable[[str], None]) -> str | None:
    """Train (or load) the teacher once, with its own settings; every run then reads the same file."""
    from kdzoo.engine import obtain_teacher
    from kdzoo.engine.teacher import teacher_cache_dir

    if config.teacher.checkpoint:
        return config.teacher.checkpoint
    if config.teacher.train.epochs == 0:
        return None  # pretrained weights used as they are, identical for every run
    data = load_data(config.data, config.train.seed)
    obtain_teacher(config, registry, data, show_progress=None)
    path = teacher_cache_dir(config) / "teacher.pt"
    echo(f"teacher: {config.teacher.model} -> {path}")
    return str(path)


def _with_teacher(config: RunConfig, teacher_file: str | None) -> RunConfig:
    if not teacher_file:
        return config
    return dataclasses.replace(config, teacher=dataclasses.replace(config.teacher, checkpoint=teacher_file))


def _same_config(run_dir: Path, config: RunConfig, teacher_file: str | None, registry: Registry) -> bool:
    """A finished run counts only if it ran with this config and teacher (settings added to kdzoo
    since then count with their defaults)."""
    saved = run_dir / "config.json"
    if not saved.is_file():
        return False
    try:
        then = config_from_dict(json.loads(saved.read_text()), registry.config_classes())
    except KdzooError:
        return False
    return then.to_dict() == _with_teacher(config, teacher_file).to_dict()


def run_one(config: RunConfig, registry: Registry, teacher_file: str | None) -> dict[str, Any]:
    from kdzoo.engine import RunState, build_trainer

    config = _with_teacher(config, teacher_file)
    run_dir = Path(config.train.out_dir) / config.train.name
    last = run_dir / "last.pt"
    trainer = build_trainer(config, registry, run_dir, show_progress=None)
    return trainer.fit(resume=RunState.load(last) if last.is_file() else None)


def compare(
    methods: list[str],
    files: list[str],
    overrides: list[str],
    seeds: list[int],
    out: Path,
    registry: Registry,
    echo: Callable[[str], None] = print,
    deploy: bool = False,
) -> dict[str, Any]:
    """Every method against scratch (see the module); ``deploy`` also exports the best run of each
    to ONNX and int8 and measures what each costs where it runs (:func:`deploy_best_runs`)."""
    if not methods:
        raise KdzooError("--methods: name at least one method, e.g. --methods kd,at")
    for method in methods:
        registry.get(method)
    out.mkdir(parents=True, exist_ok=True)
    configs = run_configs(methods, files, overrides, seeds, out, registry)
    first = configs[(methods[0], seeds[0])]
    teacher_file = shared_teacher(first, registry, echo)
    results: list[RunResult] = []
    teacher_top1 = None
    deployed: dict[str, dict[str, Any]] = {}
    total = len(configs)
    for i, ((method, seed), cfg) in enumerate(configs.items(), start=1):
        run_dir = out / "runs" / cfg.train.name
        done = run_dir / "summary.json"
        if (run_dir / "config.json").is_file() and not _same_config(run_dir, cfg, teacher_file, registry):
            echo(f"[{i}/{total}] {method} seed {seed}: its config changed since it ran; training it again")
            with RunDirLock(run_dir):  # never from under a process still training it
                shutil.rmtree(run_dir)
        if done.is_file():
            echo(f"[{i}/{total}] {method} seed {seed}: done before, skipped")
            summary = json.loads(done.read_text())
        else:
            echo(f"[{i}/{total}] {method} seed {seed}: training")
            summary = run_one(cfg, registry, teacher_file)
            echo(f"[{i}/{total}] {method} seed {seed}: top-1 {summary['student_top1']:.2f}%")
        teacher_top1 = summary.get("teacher_top1") or teacher_top1
        if (summary.get("deployed") or {}).get("network", "student") != "student":
            deployed[method] = summary["deployed"]  # the method ships more than the student (SimKD)
        curve = [json.loads(line)["val"]["top1"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        results.append(
            RunResult(
                method, seed, summary["student_top1"], summary["student_best_top1"], summary["wall_time_s"], curve
            )
        )
    report = summarise(results, [SCRATCH, *methods], teacher_top1)
    report["models"] = {**model_costs(first, teacher_file), "deployed": deployed}
    if deploy:
        report["deploy"] = deploy_best_runs(results, out, echo)
    report["meta"] = meta(methods, files, overrides, seeds, deploy)
    write_report(report, results, out)
    return report


def deploy_best_runs(results: list[RunResult], out: Path, echo: Callable[[str], None]) -> dict[str, Any]:
    """Each method's best run (highest last-epoch top-1 over seeds) exported to ONNX and int8, and its
    deploy trade-off table measured (``kdzoo export --format onnx --quantize int8``)."""
    from kdzoo.tools.deploy import export_onnx, quantize_int8
    from kdzoo.tools.tradeoff import deploy_table

    tables = {}
    for method in dict.fromkeys(r.method for r in results):
        best = max((r for r in results if r.method == method), key=lambda r: r.last_top1)
        run_dir = out / "runs" / f"{method}-seed{best.seed}"
        echo(f"deploy: {method} seed {best.seed}: ONNX, int8 and their costs")
        if not (run_dir / "student.int8.onnx").is_file():
            export_onnx(run_dir)
            quantize_int8(run_dir)
        tables[method] = {"seed": best.seed, **deploy_table(run_dir)}
    return tables


def _deploy_lines(deploy: dict[str, Any] | None) -> list[str]:
    """The deployed trade-off of each method's best run: its student in onnxruntime, fp32 and int8."""
    if not deploy:
        return []
    any_table = next(iter(deploy.values()))
    lines = [
        "## Deployed: each method's best run in onnxruntime",
        "",
        f"| method (seed) | student fp32: latency, batch 1 | int8: latency | int8 images/s, batch "
        f"{any_table['throughput_batch']} | fp32 / int8 file | fp32 top-1 | int8 top-1 | int8 retained |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, table in deploy.items():
        rows = {(r["model"], r["runtime"]): r for r in table["rows"]}
        fp32, int8 = rows[("student", "onnxruntime fp32")], rows[("student", "onnxruntime int8")]
        retained = "-" if int8["retained"] is None else f"{100 * int8['retained']:.1f}%"
        lines.append(
            f"| {method} ({table['seed']}) | {fp32['latency_ms']:.2f} ms | {int8['latency_ms']:.2f} ms | "
            f"{int8['images_per_s']:.0f} | {fp32['file_bytes'] / 1e6:.2f} / {int8['file_bytes'] / 1e6:.2f} MB | "
            f"{fp32['top1']:.2f}% | {int8['top1']:.2f}% | {retained} |"
        )
    wanted = ("teacher", "onnxruntime fp32")
    teacher = next((r for t in deploy.values() for r in t["rows"] if (r["model"], r["runtime"]) == wanted), None)
    if teacher is not None:
        lines.append(f"\nTeacher in onnxruntime fp32: {teacher['latency_ms']:.2f} ms at batch 1.")
    lines += [f"CPU, {any_table['threads']} threads; every run's whole table is in its summary.json ('deploy').", ""]
    return lines


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: list[RunResult], order: list[str], teacher_top1: float | None) -> dict[str, Any]:
    rows = []
    for method in order:
        mine = [r for r in results if r.method == method]
        last_mean, last_std = _mean_std([r.last_top1 for r in mine])
        best_mean, best_std = _mean_std([r.best_top1 for r in mine])
        rows.append(
            {
                "method": method,
                "seeds": len(mine),
                "last_top1_mean": last_mean,
                "last_top1_std": last_std,
                "best_top1_mean": best_mean,
                "best_top1_std": best_std,
                "train_time_s_mean": statistics.fmean(r.wall_time_s for r in mine),
                "retained": None if not teacher_top1 else last_mean / teacher_top1,
            }
        )
    scratch = rows[0]["last_top1_mean"]
    for row in rows:
        row["vs_scratch"] = row["last_top1_mean"] - scratch
    return {"teacher_top1": teacher_top1, "rows": rows}


def _latency_ms(model: nn.Module, shape: tuple[int, ...], repeats: int = 30) -> float:
    x = torch.randn(1, *shape)
    return median_ms(lambda: model(x), repeats, warmup=5)


def model_costs(config: RunConfig, teacher_file: str | None) -> dict[str, Any]:
    """Parameters, FLOPs per image and measured CPU latency per image of teacher and student."""
    data = load_data(config.data, config.train.seed)
    shape = (data.in_chans, config.data.img_size, config.data.img_size)
    costs = {}
    teacher_cfg = dataclasses.replace(config.teacher, checkpoint=teacher_file, pretrained=False)
    for role, cfg in (("teacher", teacher_cfg), ("student", config.student)):
        cfg = dataclasses.replace(cfg, pretrained=False) if role == "student" else cfg
        model = create_model(cfg, role, data.num_classes, data.in_chans).eval()
        costs[role] = {
            "model": cfg.model,
            "params": sum(p.numel() for p in model.parameters()),
            "flops": count_flops(model, shape),
            "latency_ms": _latency_ms(model, shape),
        }
    t, s = costs["teacher"], costs["student"]
    costs["compression"] = t["params"] / s["params"]
    costs["flops_ratio"] = t["flops"] / max(s["flops"], 1)
    costs["speedup"] = t["latency_ms"] / s["latency_ms"]
    return costs


def meta(methods, files, overrides, seeds, deploy: bool = False) -> dict[str, Any]:
    import timm

    from kdzoo import __version__

    command = ["kdzoo", "compare", "--methods", ",".join(methods), "--seeds", str(len(seeds))]
    command += ["--deploy"] if deploy else []
    command += [a for f in files for a in ("--config", f)] + [a for o in overrides for a in ("--set", o)]
    return {
        "command": " ".join(command),
        "versions": {
            "kdzoo": __version__,
            "torch": torch.__version__,
            "timm": timm.__version__,
            "python": platform.python_version(),
        },
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU only'}",
    }


def _pm(mean: float, std: float, n: int) -> str:
    """mean ± std, or the single value with n = 1 (a standard deviation of one run is not 0)."""
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f} (n = 1)"


def write_report(report: dict[str, Any], results: list[RunResult], out: Path) -> None:
    rows, costs, info = report["rows"], report["models"], report["meta"]
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.json").write_text(
        json.dumps({**report, "runs": [dataclasses.asdict(r) for r in results]}, indent=2)
    )
    t, s = costs["teacher"], costs["student"]
    teacher_top1 = report["teacher_top1"]
    lines = [
        f"# kdzoo compare: {t['model']} -> {s['model']}",
        "",
        f"Teacher top-1: {teacher_top1:.2f}%" if teacher_top1 else "Teacher: none",
        "",
        "| method | seeds | last-epoch top-1 | best-epoch top-1 | vs scratch (last) | retained (last / teacher) "
        "| train time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        retained = "-" if row["retained"] is None else f"{100 * row['retained']:.1f}%"
        last = _pm(row["last_top1_mean"], row["last_top1_std"], row["seeds"])
        best = _pm(row["best_top1_mean"], row["best_top1_std"], row["seeds"])
        lines.append(
            f"| {row['method']} | {row['seeds']} | {last} | {best} | {row['vs_scratch']:+.2f} | {retained} | "
            f"{row['train_time_s_mean']:.0f} |"
        )
    lines += [
        "",
        "Mean ± sample standard deviation over seeds; 'last' is the final epoch, 'best' the best epoch on the",
        "validation set (an optimistic number, shown for comparison with papers that report it).",
        "",
        "## Teacher / student trade-off",
        "",
        "| | model | parameters | FLOPs / image | CPU latency / image (batch 1) |",
        "|---|---|---|---|---|",
        *(
            f"| {role} | {c['model']} | {c['params'] / 1e6:.3f} M | {c['flops'] / 1e6:.1f} M | "
            f"{c['latency_ms']:.2f} ms |"
            for role, c in (("teacher", t), ("student", s))
        ),
        *(
            f"| {d['network']} | {s['model']} + {method}'s modules | {d['params'] / 1e6:.3f} M | "
            f"{d['flops'] / 1e6:.1f} M | - |"
            for method, d in costs.get("deployed", {}).items()
        ),
        "",
        f"Compression {costs['compression']:.1f}x in parameters, {costs['flops_ratio']:.1f}x in FLOPs, "
        f"{costs['speedup']:.1f}x measured speed-up.",
        "",
        *_deploy_lines(report.get("deploy")),
        "## How this was made",
        "",
        f"- command: `{info['command']}`",
        f"- versions: {', '.join(f'{k} {v}' for k, v in info['versions'].items())}",
        f"- hardware: {info['hardware']}",
        "",
        "![accuracy per epoch](results.png)",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot_curves(results, rows, teacher_top1, out / "results.png")


def plot_curves(results: list[RunResult], rows: list[dict], teacher_top1: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row in rows:
        curves = [r.curve for r in results if r.method == row["method"]]
        length = min(len(c) for c in curves)
        stacked = torch.tensor([c[:length] for c in curves])
        mean = stacked.mean(0)
        std = stacked.std(0) if len(curves) > 1 else torch.zeros_like(mean)
        epochs = range(1, length + 1)
        ax.plot(epochs, mean, label=f"{row['method']} ({row['last_top1_mean']:.2f})")
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.15)
    if teacher_top1:
        ax.axhline(teacher_top1, color="black", linewidth=1, label=f"teacher ({teacher_top1:.2f})")
    ax.set(xlabel="epoch", ylabel="validation top-1 (%)", title="accuracy per epoch (mean ± std over seeds)")
    low = min(min(r.curve) for r in results)
    ax.set_ylim(max(0, low - 5), 100)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
