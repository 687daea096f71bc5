"""The plugin guide's first package, built and installed from the guide's own text, loads and runs."""

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import TINY, pip_install_into

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "writing-a-plugin.md"


def guide_files() -> dict[str, str]:
    """Every fenced block of the guide whose first line names a file of the package (``# my-kd/...``)."""
    files = {}
    for block in re.findall(r"```(?:python|toml)\n(.*?)```", GUIDE.read_text(), flags=re.S):
        first = block.splitlines()[0]
        if first.startswith("# my-kd/"):
            files[first[2:]] = block
    return files


def test_the_guides_first_package_builds_installs_and_runs(tmp_path):
    files = guide_files()
    assert set(files) == {"my-kd/pyproject.toml", "my-kd/my_kd/plugin.py"}, files.keys()
    assert "my_kd/\n    ├── __init__.py      (empty)" in GUIDE.read_text()  # the layout the guide draws
    for name, text in {**files, "my-kd/my_kd/__init__.py": ""}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    pip_install_into(tmp_path / "my-kd", tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["KDZOO_CACHE"] = str(tmp_path / "cache")

    def kdzoo(*args):
        done = subprocess.run(
            [sys.executable, "-m", "kdzoo", *args], env=env, cwd=tmp_path, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert "plugin: feature_mse (my-kd 0.1.0)" in kdzoo("list")
    sets = [*TINY, "teacher.model=test_resnet", "student.model=test_resnet", "train.epochs=1", "weight=20"]
    ran = kdzoo("run", "--method", "kd", "--method", "feature_mse", "--quiet", *[a for s in sets for a in ("--set", s)])
    assert "student test_resnet: top-1" in ran
    metrics = (tmp_path / "runs" / "kd+feature_mse-test_resnet-seed0" / "metrics.jsonl").read_text()
    assert '"feature_mse": ' in metrics and '"feature_mse": 0.0' not in metrics  # its term, with its ramped weight
