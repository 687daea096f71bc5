"""``kdzoo compare``: every method against the student trained from scratch, same pair, data and seeds.

The teacher is trained (or loaded) once and shared by every run. Each (method, seed) run is a
normal run directory under ``<out>/runs/``; a finished one (``summary.json``) is never redone and an
interrupted one resumes from its checkpoint, so the whole comparison can be stopped and restarted.
Results: ``results.md``, ``results.csv``, ``results.png`` and ``results.json``. The runs:
:mod:`kdzoo.tools.compare_runs`; the costs and deployment: :mod:`kdzoo.tools.compare_costs`; the report:
:mod:`kdzoo.tools.leaderboard`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdzoo.data import DataBundle
from kdzoo.errors import KdzooError
from kdzoo.registry import Registry
from kdzoo.tools.compare_costs import deploy_best_runs, meta, model_costs
from kdzoo.tools.compare_runs import (
    applicable,
    cpu_cost,
    final_stage,
    finished_or_trained,
    label_share,
    read_data,
    run_configs,
    shared_teacher,
    shared_teacher_names,
    teacher_training,
    without_cache,
)
from kdzoo.tools.leaderboard import SCRATCH, RunResult, summarise, write_report
from kdzoo.tools.leaderboard_plots import write_plots

ALL = "all"


def resolve_methods(names: list[str], registry: Registry) -> list[str]:
    """``all`` is every installed method, built-in and third-party; otherwise the names, checked."""
    if names == [ALL]:
        return list(registry.methods)
    if not names or ALL in names:
        raise KdzooError("--methods: name methods (e.g. --methods kd,at) or 'all' alone for every installed one")
    for method in names:
        registry.get(method)
    return list(dict.fromkeys(names))  # a method named twice is one row


def _say(echo: Callable[[str], None], prefix: str, text: str) -> None:
    echo(prefix + text)


def compare(
    methods: list[str],
    files: list[str],
    overrides: list[str],
    seeds: list[int],
    out: Path,
    registry: Registry,
    echo: Callable[[str], None] = print,
    deploy: bool = False,
    train: bool = True,
) -> dict[str, Any]:
    """Every method against scratch (see the module); ``deploy`` also exports the best run of each
    to ONNX and int8 and measures what each costs where it runs (:func:`deploy_best_runs`).
    ``train=False`` reports the runs finished so far and trains nothing (while another compare trains
    them, say): the others are listed as not finished yet."""
    if deploy and not train:
        raise KdzooError("--deploy measures finished runs: drop --report-only, or --deploy until the runs finish")
    asked = methods
    methods = resolve_methods(methods, registry)
    out.mkdir(parents=True, exist_ok=True)
    configs = run_configs(methods, files, overrides, seeds, out, registry)
    first = configs[(methods[0], seeds[0])]
    loaded: dict[str, DataBundle] = {}  # the datasets read for the teacher and the checks, shared by all
    teacher_file = shared_teacher(first, registry, echo, train, loaded)
    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}
    for method in methods:
        runs, why, live = applicable(configs[(method, seeds[0])], registry, teacher_file, train, loaded)
        if not runs:
            echo(f"{method}: does not apply to this pair, not run: {why}")
            skipped[method] = why
        elif why:
            echo(f"{method}: {why}")
            notes[method] = why
        for seed in seeds:
            if not runs:
                del configs[(method, seed)]
            elif live:
                configs[(method, seed)] = without_cache(configs[(method, seed)])
    results: list[RunResult] = []
    run_threads: list[int | None] = []
    teacher_top1 = None
    deployed: dict[str, dict[str, Any]] = {}
    failed: dict[str, dict[int, str]] = {}
    pending: dict[str, list[int]] = {}
    total = len(configs)
    for i, ((method, seed), cfg) in enumerate(configs.items(), start=1):
        run_dir = out / "runs" / cfg.train.name
        say = functools.partial(_say, echo, f"[{i}/{total}] {method} seed {seed}: ")
        summary = finished_or_trained(cfg, run_dir, registry, teacher_file, say, train)
        if summary is None:
            pending.setdefault(method, []).append(seed)
            continue
        if isinstance(summary, str):
            failed.setdefault(method, {})[seed] = summary
            continue
        if summary.get("teacher") in shared_teacher_names(cfg):  # not a teacher a method made (born-again)
            teacher_top1 = summary.get("teacher_top1") or teacher_top1
        if (summary.get("deployed") or {}).get("network", "student") != "student":
            deployed[method] = summary["deployed"]  # the method ships more than the student (SimKD)
        records = final_stage([json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()])
        run_threads.append(summary.get("torch_threads"))
        results.append(
            RunResult(
                method,
                seed,
                summary["student_top1"],
                max(r["val"]["top1"] for r in records),
                summary["wall_time_s"],
                [r["val"]["top1"] for r in records],
                cpu_cost(summary),
                [label_share(r["train"]) for r in records],
            )
        )
    trained = teacher_training(first)
    if teacher_top1 is None and trained["curve"]:  # no run used the shared teacher (born-again alone, say)
        teacher_top1 = trained["curve"][-1]
    report = summarise(results, [SCRATCH, *methods], teacher_top1)
    report["skipped"], report["notes"], report["failed"], report["pending"] = skipped, notes, failed, pending
    report["seeds_asked"] = len(seeds)
    report["teacher_training"] = trained
    report["models"] = {**model_costs(first, teacher_file, read_data(first, loaded)), "deployed": deployed}
    if deploy:
        report["deploy"] = deploy_best_runs(results, out, echo)
    report["meta"] = meta(asked if asked == [ALL] else methods, files, overrides, seeds, deploy, train, run_threads)
    write_report(report, results, out)
    write_plots(report, results, out)
    return report
