"""Which run ``--resume`` continues, and whether the command's config allows it.

A run is identified by its config: ``--resume`` (auto) picks the latest run directory whose saved
config equals the command's, never another config's run that happens to share the folder prefix.
A resumed run keeps its config: the command may only extend ``train.epochs`` and change how the
steps are computed (the ``torch.compile`` settings; each change said); any other difference is
refused in one line naming the keys, so a ``--set`` is never silently dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdzoo.config import RunConfig, config_from_dict, load_config
from kdzoo.data import DistInfo
from kdzoo.engine.distributed import broadcast_bytes, broadcast_from_main
from kdzoo.engine.state import RunState
from kdzoo.errors import KdzooError
from kdzoo.registry import Registry

# where a run lives, not what it is: a moved or renamed run directory is the same run
LOCATION_KEYS = frozenset({"train.out_dir", "train.name"})
EXTENDABLE = "train.epochs"
# how the steps are computed, not what: a run whose compiled step failed goes on eagerly, say
HOW_IT_COMPUTES = frozenset({"train.compile", "train.compile_objective", "train.compile_mode", "train.compile_backend"})


class NothingToResume(KdzooError):
    """No checkpoint of the command's config exists (a restarted worker then starts the run afresh)."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        return {k: v for key, sub in tree.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def differences(saved: RunConfig, wanted: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ (saved, wanted), location keys aside."""
    a, b = flatten(saved.to_dict()), flatten(wanted.to_dict())
    keys = sorted((a.keys() | b.keys()) - LOCATION_KEYS)
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def config_digest(config: RunConfig) -> str:
    """What makes a run this run: its config, without its location and its length."""
    flat = {k: v for k, v in flatten(config.to_dict()).items() if k not in LOCATION_KEYS | {EXTENDABLE}}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _describe(diff: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in diff.items())


@dataclass
class ResumeTarget:
    run_dir: Path
    state: RunState
    config: RunConfig
    notes: list[str]
    finished: bool


def check_compatible(saved: RunConfig, wanted: RunConfig, run_dir: Path) -> list[str]:
    """Refuse a changed config; return what the allowed changes (more epochs, how steps are computed)
    mean, to be said."""
    diff = differences(saved, wanted)
    epochs = diff.pop(EXTENDABLE, None)
    computed = {key: diff.pop(key) for key in sorted(HOW_IT_COMPUTES & diff.keys())}
    if diff:
        raise KdzooError(
            f"cannot resume {run_dir} with a different config: {_describe(diff)}; "
            f"resume without those changes, or start a new run without --resume"
        )
    notes = [
        f"{key} {old!r} -> {new!r}: the steps from here are computed this way (the same terms, their float "
        f"sums possibly in another order)"
        for key, (old, new) in computed.items()
    ]
    if epochs is None:
        return notes
    old, new = epochs
    if new < old:
        raise KdzooError(f"cannot resume {run_dir} with train.epochs={new}: epochs can only grow on resume (was {old})")
    return [
        *notes,
        f"train.epochs {old} -> {new}: the current (or last) stage runs to the new length, its LR schedule "
        f"stretched from here; finished stages stay as they were",
    ]


def read_run(file: Path, registry: Registry) -> tuple[RunState, RunConfig]:
    state = RunState.load(file)
    return state, config_from_dict(state.config, registry.config_classes())


def resume_given(
    path: Path, files: list[str], overrides: list[str], methods: list[str], registry: Registry
) -> ResumeTarget:
    """``--resume RUN_DIR``: the run's own config, with the command's files and --set applied on top."""
    file = path if path.suffix == ".pt" else path / "last.pt"
    run_dir = file.parent
    state, saved = read_run(file, registry)
    wanted = saved
    if files or overrides or methods:
        wanted = load_config(
            files, overrides, methods, registry.config_classes(), registry.failures, base=saved.to_dict()
        )
    notes = check_compatible(saved, wanted, run_dir)
    return ResumeTarget(run_dir, state, wanted, notes, _finished(run_dir, saved, wanted))


def resume_latest(base: Path, wanted: RunConfig, registry: Registry) -> ResumeTarget:
    """``--resume``: the latest run of this config among ``base``, ``base-2``, ..."""
    candidates = [p for p in base.parent.glob(f"{base.name}*") if (p / "last.pt").is_file()]
    candidates = [p for p in candidates if p == base or p.name[len(base.name) :].lstrip("-").isdigit()]
    if not candidates:
        raise NothingToResume(f"nothing to resume: no checkpoint under {base} (run without --resume first)")
    candidates.sort(key=lambda p: (p / "last.pt").stat().st_mtime, reverse=True)
    digest = config_digest(wanted)
    for run_dir in candidates:
        saved_file = run_dir / "config.json"
        try:
            saved = config_from_dict(json.loads(saved_file.read_text()), registry.config_classes())
        except (OSError, ValueError, KdzooError):
            continue
        if config_digest(saved) == digest:
            state, saved = read_run(run_dir / "last.pt", registry)
            notes = check_compatible(saved, wanted, run_dir)
            return ResumeTarget(run_dir, state, wanted, notes, _finished(run_dir, saved, wanted))
    latest = candidates[0]
    try:
        saved = config_from_dict(json.loads((latest / "config.json").read_text()), registry.config_classes())
        why = f"the latest, {latest}, differs in {_describe(differences(saved, wanted))}"
    except (OSError, ValueError, KdzooError) as exc:
        why = f"the latest, {latest}, has no readable config.json ({exc})"
    raise NothingToResume(
        f"no run of this config to resume under {base}: {why}; "
        f"pass --resume {latest} to continue that one as it was, or run without --resume"
    )


def _finished(run_dir: Path, saved: RunConfig, wanted: RunConfig) -> bool:
    """Done, with no epochs added: the summary is written only after the last checkpoint."""
    return (run_dir / "summary.json").is_file() and wanted.train.epochs == saved.train.epochs


def from_main_process(
    find: Callable[[], ResumeTarget | None], info: DistInfo, registry: Registry
) -> ResumeTarget | None:
    """The run to resume as the main process finds it (``find``), on every process: under torchrun only
    the main process reads the checkpoint and the others receive it over the process group, since
    nodes share no filesystem (only the main node's run folder holds ``last.pt``). The main process's
    error reaches every process as the same one line."""
    if not info.enabled:
        return find()
    target, error = None, None
    if info.main:
        try:
            target = find()
        except KdzooError as exc:
            error = str(exc)
    found: dict[str, Any] | None = None
    if target is not None:
        found = {"run_dir": str(target.run_dir), "finished": target.finished, "config": target.config.to_dict()}
    error, found = broadcast_from_main((error, found), info)
    if error is not None:
        raise KdzooError(error)
    if found is None:
        return None
    payload = broadcast_bytes(target.state.to_bytes() if target is not None else None, info)
    if target is not None:
        return target
    run_dir = Path(found["run_dir"])
    state = RunState.from_bytes(payload, run_dir / "last.pt")
    config = config_from_dict(found["config"], registry.config_classes())
    return ResumeTarget(run_dir, state, config, [], bool(found["finished"]))
