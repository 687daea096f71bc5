"""The runs ``kdzoo compare`` trains: one config per (method, seed), the teacher they share, whether a
method applies to the pair, and each run read when it finished before, else trained, resumed or listed
as failed. A run is a normal run directory under ``<out>/runs/``."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdzoo.config import RunConfig, config_from_dict, load_config
from kdzoo.data import DataBundle, load_data
from kdzoo.engine.locking import RunDirLock
from kdzoo.engine.resume import differences
from kdzoo.errors import KdzooError, RunBusy, RunStopped, error_line, first_line
from kdzoo.registry import Registry
from kdzoo.tools.leaderboard import SCRATCH

FAILED = "failed.txt"  # in a run directory: the one line saying why the run did not finish


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


def read_data(config: RunConfig, loaded: dict[str, DataBundle]) -> DataBundle:
    """The dataset of ``config``, read once per comparison: ``loaded`` keeps what was read, by settings
    and seed (reading it again for every method's check took most of a comparison's start)."""
    key = json.dumps([dataclasses.asdict(config.data), config.train.seed], sort_keys=True, default=str)
    if key not in loaded:
        loaded[key] = load_data(config.data, config.train.seed)
    return loaded[key]


def shared_teacher(
    config: RunConfig,
    registry: Registry,
    echo: Callable[[str], None],
    train: bool = True,
    loaded: dict[str, DataBundle] | None = None,
) -> str | None:
    """Train (or load) the teacher once, with its own settings; every run then reads the same file.
    ``train=False``: the teacher must have been trained already (a report of the runs so far).
    ``loaded``: the datasets read so far (:func:`read_data`)."""
    from kdzoo.engine import obtain_teacher
    from kdzoo.engine.teacher import teacher_cache_dir

    if config.teacher.checkpoint:
        return config.teacher.checkpoint
    if config.teacher.train.epochs == 0:
        return None  # pretrained weights used as they are, identical for every run
    if not train and not (teacher_cache_dir(config) / "teacher.pt").is_file():
        raise KdzooError(
            f"--report-only: the teacher ({config.teacher.model}) of this comparison is not trained yet "
            "(no run can have finished); run the comparison without --report-only first"
        )
    obtain_teacher(config, registry, read_data(config, {} if loaded is None else loaded), show_progress=None)
    path = teacher_cache_dir(config) / "teacher.pt"
    echo(f"teacher: {config.teacher.model} -> {path}")
    return str(path)


def teacher_training(config: RunConfig) -> dict[str, Any]:
    """The validation top-1 per epoch and the wall time of the teacher kdzoo trained for ``config``
    (empty when the teacher was given as a file or pretrained weights)."""
    from kdzoo.engine.teacher import teacher_cache_dir

    metrics = teacher_cache_dir(config) / "metrics.jsonl"
    if config.teacher.checkpoint or not metrics.is_file():
        return {"curve": [], "wall_time_s": 0.0}
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return {"curve": [r["val"]["top1"] for r in records], "wall_time_s": sum(r["epoch_time_s"] for r in records)}


def with_teacher(config: RunConfig, teacher_file: str | None) -> RunConfig:
    if not teacher_file:
        return config
    return dataclasses.replace(config, teacher=dataclasses.replace(config.teacher, checkpoint=teacher_file))


def same_config(run_dir: Path, config: RunConfig, teacher_file: str | None, registry: Registry) -> bool:
    """A finished run counts only if it ran with this config and teacher (settings added to kdzoo
    since then count with their defaults); where it lies does not count: a comparison folder moved
    or copied elsewhere keeps its runs."""
    saved = run_dir / "config.json"
    if not saved.is_file():
        return False
    try:
        then = config_from_dict(json.loads(saved.read_text()), registry.config_classes())
    except KdzooError:
        return False
    return not differences(then, with_teacher(config, teacher_file))


def shared_teacher_names(config: RunConfig) -> tuple[str, str]:
    """How a run's summary names the teacher compare gave it (live or through its cached outputs)."""
    return config.teacher.model, f"{config.teacher.model} (cached outputs)"


def run_one(config: RunConfig, registry: Registry, teacher_file: str | None) -> dict[str, Any]:
    from kdzoo.engine import RunState, build_trainer

    config = with_teacher(config, teacher_file)
    run_dir = Path(config.train.out_dir) / config.train.name
    last = run_dir / "last.pt"
    trainer = build_trainer(config, registry, run_dir, show_progress=None)
    return trainer.fit(resume=RunState.load(last) if last.is_file() else None)


def _build_error(config: RunConfig, registry: Registry, warm_cache: bool, loaded: dict[str, DataBundle]) -> str | None:
    """Build the run (models, data, the method's modules; the teacher-output cache warmed if asked)
    without training: the first line of the KdzooError that says why the method cannot run, or None.
    ``loaded``: the datasets read so far (:func:`read_data`)."""
    from kdzoo.engine import build_run

    try:
        data = read_data(config, loaded)
        build_run(config, registry, data=data, show_progress=None, distributed=False, warm_cache=warm_cache)
    except KdzooError as exc:
        return first_line(exc)
    return None


def without_cache(config: RunConfig) -> RunConfig:
    return dataclasses.replace(config, teacher=dataclasses.replace(config.teacher, cache=False))


def applicable(
    config: RunConfig,
    registry: Registry,
    teacher_file: str | None,
    warm_cache: bool = True,
    loaded: dict[str, DataBundle] | None = None,
) -> tuple[bool, str, bool]:
    """Whether the method of ``config`` runs on its pair and data at its defaults: (runs, the reason or
    note, with a live teacher instead of the cache). A method that refuses the teacher-output cache
    runs with the live teacher, and says so; one that cannot run at all is listed with the reason.
    ``warm_cache=False`` (a report that trains nothing) leaves the cache unfilled; ``loaded``: the
    datasets read so far (:func:`read_data`)."""
    config, loaded = with_teacher(config, teacher_file), {} if loaded is None else loaded
    error = _build_error(config, registry, warm_cache, loaded)
    if error is None:
        return True, "", False
    if not config.teacher.cache:
        return False, error, False
    live_error = _build_error(without_cache(config), registry, warm_cache, loaded)
    if live_error is None:
        return True, f"live teacher, not the teacher-output cache ({error})", True
    return False, live_error, False


def final_stage(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The epochs of a run's last stage: every method runs it for ``train.epochs`` epochs with the
    student learning the task, so curves compare epoch by epoch. Stages before it (AB's init, FT's
    paraphraser, SSKD's teacher head) leave the student's accuracy meaningless; they count in the cost."""
    last = records[-1]["stage_index"]
    return [r for r in records if r["stage_index"] == last]


def label_share(train: dict[str, Any]) -> float:
    """The labels' cross-entropy's share of an epoch's weighted loss (1.0 for the student alone): how
    much the distillation terms steer training."""
    ce = train.get("weights", {}).get("ce", 1.0) * train.get("ce", 0.0)
    return ce / train["loss"] if train.get("loss") else 1.0


def cpu_cost(summary: dict[str, Any]) -> float | None:
    """The run's CPU seconds, charged the teacher's pass that filled the teacher-output cache it read (what
    training this method alone costs, whether or not other runs shared the cache)."""
    if summary.get("cpu_time_s") is None:
        return None
    return summary["cpu_time_s"] + (summary.get("teacher_cache_cpu_s") or 0.0)


def finished_or_trained(
    config: RunConfig,
    run_dir: Path,
    registry: Registry,
    teacher_file: str | None,
    say: Callable[[str], None],
    train: bool = True,
) -> dict[str, Any] | str | None:
    """The run's summary: read when it finished with this config before, else trained (resumed from its
    checkpoint when it was interrupted; from the start when its config changed since). A run that
    failed (a non-finite loss, say) gives the one line saying why, also on a restart: it is listed,
    and the other runs go on. ``train=False``: ``None`` for a run that has not finished, untouched."""
    done, failed = run_dir / "summary.json", run_dir / FAILED
    changed = (run_dir / "config.json").is_file() and not same_config(run_dir, config, teacher_file, registry)
    if changed and not train:
        say("ran with another config; not in this report")
        return None
    if changed:
        say("its config changed since it ran; training it again")
        with RunDirLock(run_dir):  # never from under a process still training it
            shutil.rmtree(run_dir)
    if done.is_file():
        try:
            summary = json.loads(done.read_text())
            say("done before, skipped")
            return summary
        except json.JSONDecodeError:
            if not train:
                say("its summary.json is unreadable; not in this report")
                return None
            say("its summary.json is unreadable; finishing it again from its last checkpoint")
    if failed.is_file():
        why = failed.read_text().strip()
        say(f"failed before, not retried: {why}")
        return why
    if not train:
        say("not finished yet, not in this report")
        return None
    say("training")
    try:
        summary = run_one(config, registry, teacher_file)
    except RunStopped:
        raise  # stopped on request: the whole comparison stops, and resumes this run when restarted
    except RunBusy as exc:
        why = first_line(exc)
        say(f"not in this report: {why}")  # another process trains it; a later compare reads its result
        return why
    except KdzooError as exc:  # the run's own verdict (a non-finite loss, say): a restart would repeat it
        why = first_line(exc)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not (run_dir / "config.json").is_file():  # so that a changed config retries it
            (run_dir / "config.json").write_text(json.dumps(with_teacher(config, teacher_file).to_dict(), indent=2))
        failed.write_text(why + "\n")
        say(f"failed: {why}")
        return why
    except Exception as exc:  # a plugin's bug or the machine (memory): listed, and retried on a restart
        why = error_line(exc)
        say(f"failed: {why} (a restart tries it again)")
        return why
    say(f"top-1 {summary['student_top1']:.2f}%")
    return summary
