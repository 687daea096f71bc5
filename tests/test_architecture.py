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


def test_no_built_in_method_is_named_in_the_core():
    """kdzoo/ holds no built-in method's name as a string (the method knowledge lives in the plugins and,
    for the torchdistill comparison, in benchmarks/): renaming a plugin cannot break the core in silence.
    The defaults a user sees (the CLI's and the library's method) are the exceptions, and an attribute
    name that happens to spell one (getattr(ep, "dist")) is not a method's name."""
    import ast

    from kdzoo.registry import registry

    methods = registry().methods.items()
    builtin = {name for name, info in methods if getattr(info.factory, "__module__", "").startswith("kdzoo_plugins")}
    allowed = {("kdzoo/cli.py", "fitnets"), ("kdzoo/library.py", "kd")}  # `kdzoo run`'s and `distill`'s default
    found = []
    for path in sorted((ROOT / "kdzoo").rglob("*.py")):
        tree = ast.parse(path.read_text())
        attribute_names = {
            id(node.args[1])
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and getattr(node.func, "id", None) in ("getattr", "hasattr")
            and len(node.args) > 1
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in builtin and id(node) not in attribute_names:
                where = str(path.relative_to(ROOT))
                if (where, node.value) not in allowed:
                    found.append(f"{where}:{node.lineno} {node.value!r}")
    assert not found, found
