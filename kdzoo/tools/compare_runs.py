"""The runs ``kdzoo compare`` trains: one config per (method, seed), the teacher they share, whether a
method applies to the pair, and each run read when it finished before, else trained, resumed or listed
as failed. A run is a normal run directory under ``<out>/runs/``.

Compare never deletes a run: one whose config.json is of another config, unreadable or written by another
kdzoo or plugin version is moved aside to ``<out>/set-aside/`` (said in one line) before its folder is
trained again; a damaged ``summary.json`` or ``metrics.jsonl`` is finished again from the run's checkpoint."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdzoo.checkpoint import write_text_atomic
from kdzoo.config import RunConfig, config_from_dict, load_config
from kdzoo.data import DataBundle, DataContents, load_data
from kdzoo.engine.locking import RunDirLock
from kdzoo.engine.resume import differences
from kdzoo.errors import KdzooError, RunBusy, RunStopped, error_line, first_line
from kdzoo.registry import Registry
from kdzoo.reporting.metrics_file import DamagedFile, read_json, read_records, rewrite_remedy
from kdzoo.reporting.records import RunSummary
from kdzoo.tools.leaderboard import SCRATCH, RunResult

FAILED = "failed.txt"  # in a run directory: the one line saying why the run did not finish
SET_ASIDE = "set-aside"  # beside <out>/runs/: the runs compare moved out of its way, never deleted


def run_configs(
    methods: list[str], files: list[str], overrides: list[str], seeds: list[int], out: Path, registry: Registry
) -> dict[tuple[str, int], RunConfig]:
    """One config per (method, seed); ``scratch`` is the student alone, with the labels only. In the order
    they train: every method's first seed, then every method's second..., so a busy spell of the machine
    falls on all methods alike rather than on one method's every run (and a stopped comparison has them all)."""
    configs = {}
    for seed in seeds:
        for method in [SCRATCH, *methods]:
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
    from kdzoo.engine.teacher_files import teacher_cache_dir

    if config.teachers:  # several: each run obtains each, and the trained-teacher cache shares them
        return None
    if config.teacher.checkpoint:
        return config.teacher.checkpoint
    if config.teacher.train.epochs == 0:
        return None  # pretrained weights used as they are, identical for every run
    data = read_data(config, {} if loaded is None else loaded)
    if not train and not (teacher_cache_dir(config, data.contents) / "teacher.pt").is_file():
        raise KdzooError(
            f"--report-only: the teacher ({config.teacher.model}) of this comparison is not trained yet "
            "(no run can have finished); run the comparison without --report-only first"
        )
    obtain_teacher(config, registry, data, show_progress=None)
    path = teacher_cache_dir(config, data.contents) / "teacher.pt"
    echo(f"teacher: {config.teacher.model} -> {path}")
    return str(path)


def teacher_training(
    config: RunConfig, contents: DataContents | None, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """The validation top-1 per epoch and the wall time of the teacher kdzoo trained for ``config`` on
    data holding ``contents`` (empty when the teacher was given as a file or pretrained weights, or its
    record is damaged: the teacher itself is fine, so the report goes on without its curve, said in
    one line)."""
    from kdzoo.engine.teacher_files import teacher_cache_dir

    metrics = teacher_cache_dir(config, contents) / "metrics.jsonl"
    nothing = {"curve": [], "wall_time_s": 0.0}
    if config.teacher.checkpoint or not metrics.is_file():
        return nothing
    try:
        records = read_records(metrics)
    except DamagedFile as exc:
        echo(f"teacher: {exc}; the report goes without the teacher's curve (delete the file to silence this)")
        return nothing
    return {"curve": [r["val"]["top1"] for r in records], "wall_time_s": sum(_seconds(r) for r in records)}


def _seconds(record: dict[str, Any]) -> float:
    """An epoch's wall time (0 for a record of a kdzoo that did not time epochs)."""
    value = record.get("epoch_time_s")
    return float(value) if isinstance(value, int | float) else 0.0


def with_teacher(config: RunConfig, teacher_file: str | None) -> RunConfig:
    if not teacher_file:
        return config
    return dataclasses.replace(config, teacher=dataclasses.replace(config.teacher, checkpoint=teacher_file))


def _value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."  # a long kwargs dict would make the line a page


def describe(diff: dict[str, tuple[Any, Any]], most: int = 3) -> str:
    """``data.name ('digits' -> 'fashion_mnist'), ...``: the first ``most`` keys that differ, then how many more."""
    shown = [f"{key} ({_value(old)} -> {_value(new)})" for key, (old, new) in list(diff.items())[:most]]
    more = f" and {len(diff) - most} more" if len(diff) > most else ""
    return ", ".join(shown) + more


def config_problem(run_dir: Path, config: RunConfig, teacher_file: str | None, registry: Registry) -> str | None:
    """Why the run in ``run_dir`` is not a run of this config and teacher, or None when it is (or has no
    config.json yet). Settings added to kdzoo since it ran count with their defaults; where it lies does
    not count: a comparison folder moved or copied elsewhere keeps its runs."""
    saved = run_dir / "config.json"
    if not saved.is_file():
        return None
    try:
        then = config_from_dict(read_json(saved), registry.config_classes())
    except DamagedFile as exc:
        return f"its config.json is unreadable ({exc.why})"
    except (KdzooError, KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"its config.json is not one this kdzoo reads (another kdzoo or plugin version? {error_line(exc)})"
    diff = differences(then, with_teacher(config, teacher_file))
    return f"it ran with another config: {describe(diff)}" if diff else None


def set_aside(run_dir: Path) -> Path:
    """Move the run out of compare's way, to ``<out>/set-aside/<name>`` (``-2``, ``-3``... when taken):
    kept whole for its owner to read or delete, never deleted by compare."""
    aside = run_dir.parent.with_name(SET_ASIDE) / run_dir.name
    aside.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while aside.exists():
        n += 1
        aside = aside.with_name(f"{run_dir.name}-{n}")
    with RunDirLock(run_dir):  # never from under a process still training it
        run_dir.rename(aside)
    return aside


def used_the_shared_teacher(summary: RunSummary, config: RunConfig) -> bool:
    """Whether a run's teacher was the one compare gave it (live or through its cached outputs), not
    one a method made (a born-again generation)."""
    if summary.teacher_source is not None:
        return summary.teacher_source in ("model", "cached outputs")
    # a summary of a kdzoo that did not record the source: its display name says it
    return summary.teacher in (config.teacher.model, f"{config.teacher.model} (cached outputs)")


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


def cpu_cost(summary: RunSummary) -> float | None:
    """The run's CPU seconds, charged the teacher's pass that filled the teacher-output cache it read (what
    training this method alone costs, whether or not other runs shared the cache)."""
    if summary.cpu_time_s is None:
        return None
    return summary.cpu_time_s + (summary.teacher_cache_cpu_s or 0.0)


@dataclasses.dataclass(frozen=True)
class Finished:
    """A run that finished: its summary and its epochs' records (``metrics.jsonl``), each read whole."""

    summary: RunSummary
    records: list[dict[str, Any]]


def read_finished(run_dir: Path) -> Finished:
    """The finished run in ``run_dir``; :class:`DamagedFile` when its summary or metrics cannot be read whole."""
    summary = RunSummary.read(run_dir / "summary.json")
    records = read_records(run_dir / "metrics.jsonl")
    if not records:
        raise DamagedFile(run_dir / "metrics.jsonl", "missing or empty", "")
    return Finished(summary, records)


def run_result(method: str, seed: int, run: Finished) -> RunResult:
    """The leaderboard's record of a finished run: its last stage's curve, and each stage's epoch times
    (how steady the machine was while it trained: :func:`kdzoo.tools.leaderboard.timing_spread`)."""
    records = final_stage(run.records)
    stages: dict[int, list[float]] = {}
    for record in run.records:
        if isinstance(record.get("epoch_time_s"), int | float):
            stages.setdefault(record["stage_index"], []).append(float(record["epoch_time_s"]))
    return RunResult(
        method=method,
        seed=seed,
        last_top1=run.summary.student_top1,
        best_top1=max(r["val"]["top1"] for r in records),
        wall_time_s=run.summary.wall_time_s,
        curve=[r["val"]["top1"] for r in records],
        cpu_time_s=cpu_cost(run.summary),
        label_share=[label_share(r["train"]) for r in records],
        epoch_times_s=list(stages.values()),
    )


def finished_or_trained(
    config: RunConfig,
    run_dir: Path,
    registry: Registry,
    teacher_file: str | None,
    say: Callable[[str], None],
    train: bool = True,
) -> Finished | str | None:
    """The finished run: read when it finished with this config before, else trained (resumed from its
    checkpoint when it was interrupted). A run of another config, or whose config.json cannot be read, is
    moved aside (:func:`set_aside`) and its folder trained anew; a damaged summary or metrics file is
    finished again from the run's checkpoint. A run that failed (a non-finite loss, say) gives the one
    line saying why, also on a restart: it is listed, and the other runs go on. ``train=False``: ``None``
    for a run that has not finished or is not of this config, left untouched."""
    problem = config_problem(run_dir, config, teacher_file, registry)
    if problem and not train:
        say(f"{problem}; not in this report")
        return None
    try:
        if problem:
            say(f"{problem}; moved it to {set_aside(run_dir)} and training it again")
        found, settled = _done_before(run_dir, say, train)
    except RunBusy as exc:  # another process trains it; a later compare reads its result
        why = first_line(exc)
        say(f"not in this report: {why}")
        return why
    if settled:
        return found
    failed = run_dir / FAILED
    if failed.is_file():
        why = failed.read_text(errors="replace").strip()
        say(f"failed before, not retried: {why}")
        return why
    if not train:
        say("not finished yet, not in this report")
        return None
    return _train(config, run_dir, registry, teacher_file, say)


def _done_before(run_dir: Path, say: Callable[[str], None], train: bool) -> tuple[Finished | None, bool]:
    """(the run, True) when it finished before, read whole; (None, True) when it is not in a report that
    trains nothing; (None, False) when it is to be trained. A damaged summary or metrics file is said, and
    the run finished again from its checkpoint (a resumed run writes both again from the records the
    checkpoint keeps); without a checkpoint to finish it from, it is moved aside."""
    if not (run_dir / "summary.json").is_file():
        return None, False
    try:
        found = read_finished(run_dir)
    except DamagedFile as exc:
        damage = f"its {exc.path.name} is damaged ({exc.why})"
        if not train:
            say(f"{damage}; not in this report")
            return None, True
        if (run_dir / "last.pt").is_file():
            say(f"{damage}; finishing it again from its last checkpoint")
        else:
            say(f"{damage} and it has no checkpoint; moved it to {set_aside(run_dir)} and training it again")
        return None, False
    say("done before, skipped")
    return found, True


def _train(
    config: RunConfig, run_dir: Path, registry: Registry, teacher_file: str | None, say: Callable[[str], None]
) -> Finished | str:
    failed = run_dir / FAILED
    say("training")
    try:
        summary = RunSummary.from_json(run_one(config, registry, teacher_file))
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
            write_text_atomic(
                json.dumps(with_teacher(config, teacher_file).to_dict(), indent=2), run_dir / "config.json"
            )
        write_text_atomic(why + "\n", failed)
        say(f"failed: {why}")
        return why
    except Exception as exc:  # a plugin's bug or the machine (memory): listed, and retried on a restart
        why = error_line(exc)
        say(f"failed: {why} (a restart tries it again)")
        return why
    say(f"top-1 {summary.student_top1:.2f}%")
    return Finished(summary, read_records(run_dir / "metrics.jsonl", rewrite_remedy(run_dir)))
