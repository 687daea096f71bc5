"""A run's record files: ``metrics.jsonl`` (one JSON line per epoch, the source of truth for plots and
comparisons) written atomically, and the checked readers of it, ``summary.json`` and ``config.json``,
which ``kdzoo plot``, ``eval``, ``export`` and ``compare`` all read through: a damaged file is one line
naming it and what to do, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdzoo.checkpoint import write_text_atomic
from kdzoo.errors import KdzooError


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Every record, one line each, replacing the file atomically: a kill mid-write leaves the
    previous epochs' file, never a cut line (rewriting a run's few hundred lines costs nothing)."""
    write_text_atomic("".join(json.dumps(r) + "\n" for r in records), path)


def significant(value: float, digits: int = 7) -> float:
    """``value`` kept to ``digits`` significant digits, whatever its scale (a term of 4.7e-5 keeps
    its digits; rounding to a fixed number of decimals would not)."""
    return float(f"{value:.{digits}g}")


# what every epoch record holds, by the type it must have (plots and compare read each of them)
RECORD_FIELDS: dict[str, type] = {"stage_index": int, "global_epoch": int, "train": dict, "val": dict}


class DamagedFile(KdzooError):
    """A run's record file that cannot be read whole: ``why`` says what is wrong, ``remedy`` what to do."""

    def __init__(self, path: Path, why: str, remedy: str):
        super().__init__(f"{path} is damaged ({why}); {remedy}" if remedy else f"{path} is damaged ({why})")
        self.path, self.why = path, why


def _text(path: Path, remedy: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise DamagedFile(path, "not UTF-8 text", remedy) from None
    except OSError as exc:
        raise DamagedFile(path, exc.strerror or type(exc).__name__, remedy) from None


def _parse(text: str, path: Path, remedy: str, where: str = "") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DamagedFile(path, f"{where}not JSON: {exc.msg} at column {exc.colno}", remedy) from None
    except RecursionError:  # nested deeper than the parser goes: no kdzoo file is
        raise DamagedFile(path, f"{where}nested too deep", remedy) from None


def read_json(path: Path, remedy: str = "") -> dict[str, Any]:
    """The JSON object in ``path``; empty, cut short, not UTF-8 or not an object raises :class:`DamagedFile`."""
    text = _text(path, remedy)
    if not text.strip():
        raise DamagedFile(path, "empty", remedy)
    data = _parse(text, path, remedy)
    if not isinstance(data, dict):
        raise DamagedFile(path, "not a JSON object", remedy)
    return data


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "is not a JSON object"
    for name, kind in RECORD_FIELDS.items():
        if not isinstance(record.get(name), kind):
            return f"has no {name}"
    if not isinstance(record["val"].get("top1"), int | float):
        return "has no val.top1"
    return None


def read_records(path: Path, remedy: str = "") -> list[dict[str, Any]]:
    """The epoch records of a ``metrics.jsonl`` (none when it is missing); a line that is not a whole
    record (a write cut short, another program's file) raises :class:`DamagedFile` naming the line."""
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(_text(path, remedy).splitlines(), start=1):
        if not line.strip():
            continue
        record = _parse(line, path, remedy, where=f"line {number} is ")
        problem = _record_problem(record)
        if problem:
            raise DamagedFile(path, f"line {number} {problem}", remedy)
        records.append(record)
    return records


def rewrite_remedy(run_dir: Path) -> str:
    """What to do about a damaged metrics or summary file: a resume writes both again from the last checkpoint
    (which keeps every epoch's record); ``--resume`` leaves a run with a summary.json alone, as finished."""
    return (
        f"move {run_dir / 'summary.json'} aside and `kdzoo run --resume {run_dir}` writes both again from the "
        "run's last checkpoint"
    )
