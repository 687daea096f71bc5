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


def test_the_loop_file_is_the_loop_composed_with_its_step():
    """engine/loop.py defines the loop (Trainer) and imports its step, rather than inheriting half of
    itself from another file; no engine class inherits another of kdzoo's engine classes."""
    import ast

    engine = ROOT / "kdzoo" / "engine"
    loop = ast.parse((engine / "loop.py").read_text())
    classes = [node for node in loop.body if isinstance(node, ast.ClassDef)]
    assert [c.name for c in classes] == ["Trainer"] and not classes[0].bases
    imported = {alias.name for node in ast.walk(loop) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert "Step" in imported
    ours = {
        c.name for path in engine.glob("*.py") for c in ast.parse(path.read_text()).body if isinstance(c, ast.ClassDef)
    }
    for path in engine.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                assert not bases & ours, f"{path.name}: {node.name} inherits {bases & ours}"
