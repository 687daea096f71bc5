"""scripts/reference_gaps.py, the source of the gaps docs/differences-from-torchdistill.md reports, runs
and finds every method within the tests' tolerance of its reference."""

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reference_gaps.py"


def test_every_listed_gap_is_within_the_tolerance(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--seeds", "2"], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = re.findall(r"^\| ([\w +-]+) \| .+ \| ([0-9.e+-]+) \|$", done.stdout, flags=re.MULTILINE)
    methods = {name for name, _gap in rows}
    assert {"kd", "crd", "sskd", "reviewkd", "ofa", "mlkd", "deit"} <= methods, done.stdout
    assert all(float(gap) < 1e-5 for _name, gap in rows), done.stdout
