"""Cache entries keyed by what made them, and why a run did not find one to reuse.

Each entry (a trained teacher, a teacher's stored outputs) keeps the key that made it in its
``key.json``. When a run needs an entry that does not exist yet, :func:`why_new_entry` names the
settings in which the nearest existing entry differs ("the data's contents", "train.epochs"), so a
user sees at once that they relabelled their data or changed a setting, not a silent retraining.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdzoo.checkpoint import write_text_atomic


def remember_key(folder: Path, key: dict[str, Any]) -> None:
    write_text_atomic(json.dumps(key, indent=2, sort_keys=True), folder / "key.json")


def why_new_entry(folder: Path, key: dict[str, Any], siblings: str) -> str:
    """Why ``folder`` (an entry not made yet) is none of the entries matching ``siblings`` (a glob
    beside it): the settings in which the nearest of them differs."""
    nearest: list[str] | None = None
    for other in folder.parent.glob(f"{siblings}/key.json"):
        try:
            theirs = json.loads(other.read_text())
        except (OSError, ValueError):
            continue
        differs = _differences(key, theirs)
        if differs and (nearest is None or len(differs) < len(nearest)):
            nearest = differs
    if not nearest:
        return "none cached yet"
    said = ", ".join(_named(d) for d in nearest[:4]) + (" ..." if len(nearest) > 4 else "")
    return f"the nearest cached one differs in {said}"


def _named(field: str) -> str:
    return "the data's contents" if field.endswith("contents") or ".contents." in field else field


def _differences(mine: Any, theirs: Any, prefix: str = "") -> list[str]:
    if isinstance(mine, dict) and isinstance(theirs, dict):
        found = []
        for k in sorted(set(mine) | set(theirs)):
            found += _differences(mine.get(k), theirs.get(k), f"{prefix}{k}.")
        return found
    return [] if mine == theirs else [prefix.rstrip(".")]
