"""``metrics.jsonl``: one JSON line per epoch, the source of truth for plots and comparisons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def significant(value: float, digits: int = 7) -> float:
    """``value`` kept to ``digits`` significant digits, whatever its scale (a term of 4.7e-5 keeps
    its digits; rounding to a fixed number of decimals would not)."""
    return float(f"{value:.{digits}g}")
