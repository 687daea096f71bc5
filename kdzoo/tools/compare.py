"""``kdzoo compare``: every method against the student trained from scratch, same pair, data and seeds.

The teacher is trained (or loaded) once and shared by every run. Each (method, seed) run is a
normal run directory under ``<out>/runs/``; a finished one (``summary.json``) is never redone and an
interrupted one resumes from its checkpoint, so the whole comparison can be stopped and restarted.
One folder holds one comparison: the default is named after the student and a digest of what every run
shares (data, teacher, student, schedule), and ``comparison.json`` records it, so a comparison of another
config never trains over another's runs. Results: ``results.md``, ``results.csv``, ``results.png`` and
``results.json``. The runs: :mod:`kdzoo.tools.compare_runs`; the costs and deployment:
:mod:`kdzoo.tools.compare_costs`; the report: :mod:`kdzoo.tools.leaderboard`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdzoo.checkpoint import write_text_atomic
from kdzoo.config import RunConfig
from kdzoo.data import DataBundle
from kdzoo.engine.resume import LOCATION_KEYS, flatten
from kdzoo.errors import KdzooError
from kdzoo.registry import Registry
from kdzoo.reporting.metrics_file import read_json
from kdzoo.tools.compare_costs import deploy_best_runs, meta, model_costs
from kdzoo.tools.compare_runs import (
    applicable,
    describe,
    finished_or_trained,
    read_data,
    run_configs,
    run_result,
    shared_teacher,
    teacher_training,
    used_the_shared_teacher,
    without_cache,
)
from kdzoo.tools.leaderboard import SCRATCH, RunResult, summarise, write_report
from kdzoo.tools.leaderboard_plots import write_plots

ALL = "all"
COMPARISON = "comparison.json"  # in a comparison folder: the config its runs share
PER_RUN_KEYS = LOCATION_KEYS | {"train.seed"}  # what differs between a comparison's runs, or where they lie


def resolve_methods(names: list[str], registry: Registry, teachers: int = 1) -> list[str]:
    """``all`` is every installed method, built-in and third-party, that ``teachers`` teachers can run
    (a method that weighs several teachers needs ``teachers:``); otherwise the names, checked."""
    if names == [ALL]:
        return [name for name, info in registry.methods.items() if info.min_teachers <= teachers]
    if not names or ALL in names:
        raise KdzooError("--methods: name methods (e.g. --methods kd,at) or 'all' alone for every installed one")
    for method in names:
        registry.get(method)
    return list(dict.fromkeys(names))  # a method named twice is one row


def shared_settings(config: RunConfig) -> dict[str, Any]:
    """What every run of a comparison shares, as flat ``section.key`` settings (JSON values): ``config``
    without its methods (each method's own settings are its runs' business, checked run by run), seed and
    location."""
    flat = flatten(dataclasses.replace(config, methods=[], method_configs={}).to_dict())
    settings = {k: v for k, v in flat.items() if k not in PER_RUN_KEYS and k != "methods"}
    return json.loads(json.dumps(settings, default=str))  # as comparison.json holds them: tuples are lists


def comparison_digest(config: RunConfig) -> str:
    """8 hex digits of the settings every run shares (:func:`shared_settings`). Only settings away from
    their defaults count: a setting a later kdzoo adds (at its default) keeps a comparison's folder."""
    default = shared_settings(RunConfig(methods=[]))
    chosen = {k: v for k, v in shared_settings(config).items() if k not in default or v != default[k]}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:8]


def default_folder(config: RunConfig) -> Path:
    """``<train.out_dir>/compare-<student>-<digest>``: one folder per comparison config
    (:func:`comparison_digest`), so comparing on other data or with another teacher never lands on the
    runs of the first; more methods or seeds of the same comparison share its folder and finished runs."""
    return Path(config.train.out_dir) / f"compare-{config.student.model}-{comparison_digest(config)}"


def claim_folder(out: Path, config: RunConfig, write: bool = True) -> None:
    """Refuse, in one line naming the difference, a folder that holds a comparison of another config;
    record this one's (``comparison.json``) when ``write``. A setting the record lacks (added to kdzoo
    since) counts at its default. A folder from before kdzoo recorded it is taken as it is: its runs are
    checked one by one (:func:`kdzoo.tools.compare_runs.finished_or_trained`)."""
    record, now = out / COMPARISON, shared_settings(config)
    if record.is_file():
        remedy = "choose another --out, or delete it to let this comparison set aside the runs of another config"
        saved = read_json(record, remedy).get("settings")
        if not isinstance(saved, dict):
            raise KdzooError(f"{record} is not a record of kdzoo compare (no settings); {remedy}")
        default = shared_settings(RunConfig(methods=[]))
        then = {k: saved.get(k, default.get(k)) for k in now}
        diff = {k: (then[k], now[k]) for k in now if then[k] != now[k]}
        if diff:
            raise KdzooError(
                f"{out} holds a comparison of another config ({describe(diff)}); its runs stay as they are: "
                "choose another --out for this one"
            )
    if write:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(json.dumps({"settings": now}, indent=2), record)


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
    configs = run_configs(methods, files, overrides, seeds, out, registry)
    first = configs[(methods[0], seeds[0])]
    claim_folder(out, first, write=train)
    out.mkdir(parents=True, exist_ok=True)
    echo(f"comparison folder: {out}")
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
        run = finished_or_trained(cfg, run_dir, registry, teacher_file, say, train)
        if run is None:
            pending.setdefault(method, []).append(seed)
            continue
        if isinstance(run, str):
            failed.setdefault(method, {})[seed] = run
            continue
        summary = run.summary
        if used_the_shared_teacher(summary, cfg):  # not a teacher a method made (born-again)
            teacher_top1 = summary.teacher_top1 or teacher_top1
        if summary.deployed.get("network", "student") != "student":
            deployed[method] = summary.deployed  # the method ships more than the student (SimKD)
        run_threads.append(summary.torch_threads)
        results.append(run_result(method, seed, run))
    trained = teacher_training(first, read_data(first, loaded).contents, echo)
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
