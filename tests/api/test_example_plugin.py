"""The example third-party plugin (examples/kdzoo-logit-matching) installs with pip, is discovered, runs
and passes its tests.

The package is installed for real (``pip install --target``, offline, no build isolation) from a copy of
its source, so building it leaves no ``build/`` or ``*.egg-info`` in the repository; every check then runs
in a subprocess whose ``PYTHONPATH`` is that target, exactly as an installed distribution is seen.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import TINY, pip_install_into

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kdzoo-logit-matching"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """``examples/kdzoo-logit-matching`` installed with pip into a fresh target directory (once for the module)."""
    missing = [tool for tool in ("pip", "setuptools") if importlib.util.find_spec(tool) is None]
    if missing:  # setuptools: the example's build backend, taken from this environment (offline, no isolation)
        pytest.skip(f"installing the example needs {' and '.join(missing)} in this environment")
    root = tmp_path_factory.mktemp("example-plugin")
    source = root / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".*_cache"))
    target = root / "site"
    pip_install_into(source, target)
    assert (target / "kdzoo_logit_matching" / "plugin.py").is_file()
    return target


def _run(site: Path, args: list[str], cwd: Path, cache: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    # one OpenMP thread unless told otherwise: tiny models gain nothing from more, and on a busy machine
    # spinning worker threads make a run many times slower
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "KDZOO_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, check=False
    )


def test_listed_with_its_distribution(site, tmp_path):
    listed = _run(site, ["-m", "kdzoo", "list"], tmp_path, tmp_path / "cache")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("logit_matching "))
    assert "Do Deep Nets Really Need to be Deep" in lines[at + 1]
    assert "plugin: logit_matching (kdzoo-logit-matching 0.1.0)" in lines[at + 2]
    assert "[failed]" not in listed.stdout


def test_runs_from_the_command_line(site, tmp_path):
    settings = [
        *TINY,
        "teacher.model=test_resnet",
        "student.model=test_resnet",
        "train.epochs=1",
        f"train.out_dir={tmp_path / 'runs'}",
    ]
    settings.append("logit_matching.warmup_epochs=4")
    args = ["-m", "kdzoo", "run", "--method", "logit_matching", "--quiet", *(a for s in settings for a in ("--set", s))]
    ran = _run(site, args, tmp_path, tmp_path / "cache")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    (record,) = [json.loads(line) for line in next((tmp_path / "runs").glob("logit_matching-*/metrics.jsonl")).open()]
    train = record["train"]
    assert {"ce", "logit_l2"} <= set(train)
    assert train["weights"] == pytest.approx({"ce": 0.0, "logit_l2": 1 / 4})  # warm-up, epoch 0


def test_its_own_test_suite_passes(site, tmp_path):
    tests = EXAMPLE / "tests"
    # run from tmp_path so the installed copy (not the source tree) is imported; no .pytest_cache in the repo
    result = _run(site, ["-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)], tmp_path, tmp_path / "cache")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout
