"""The layering of docs/architecture.md holds: import-linter's contracts (pyproject.toml) pass."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = shutil.which("lint-imports")
    assert lint, "import-linter is part of the test extra: pip install -e '.[test]'"
    done = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


def test_the_loop_reads_in_one_sitting():
    lines = (ROOT / "kdzoo" / "engine" / "loop.py").read_text().splitlines()
    assert len(lines) <= 250, f"kdzoo/engine/loop.py has {len(lines)} lines; the loop file stays under ~250"
