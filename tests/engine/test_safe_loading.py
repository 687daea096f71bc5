"""No file kdzoo reads can run code: a pickle payload is refused on every path that loads a file."""

from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from kdzoo import checkpoint
from kdzoo.cli import main
from kdzoo.errors import KdzooError
from tests.helpers import TINY


class Payload:
    """Unpickling this creates the marker file: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _poison(path: Path, marker: Path) -> None:
    """Add a payload to a real checkpoint, keeping everything else in it."""
    state = checkpoint.load(path)
    state["extra"] = Payload(marker)
    torch.save(state, path)


def _sets(tmp_path, *extra):
    pairs = [*TINY, "teacher.model=test_resnet", "student.model=test_resnet", f"train.out_dir={tmp_path / 'runs'}"]
    return [a for s in [*pairs, *extra] for a in ("--set", s)]


def _refused(result, path: Path, marker: Path) -> None:
    """One ``Error:`` line naming the file and the global it refused (after any progress line, such as
    compare's folder), no traceback, and the payload never ran."""
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert result.exit_code != 0 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert result.output.rstrip().endswith(errors[0]), result.output
    assert str(path) in errors[0] and "refused" in errors[0] and "'io.open'" in errors[0], errors[0]
    assert not marker.exists(), "code from the file ran"


def test_a_payload_never_runs_on_any_path_that_loads_a_file(tmp_path):
    runner = CliRunner()
    marker = tmp_path / "marker"
    ran = runner.invoke(main, ["run", "--method", "kd", "--quiet", *_sets(tmp_path)])
    assert ran.exit_code == 0, ran.output
    run_dir = tmp_path / "runs" / "kd-test_resnet-seed0"
    (teacher_dir,) = [p for p in (tmp_path / "cache" / "teachers").iterdir() if p.is_dir()]  # $KDZOO_CACHE

    # a real last.pt with a payload added: eval, --resume RUN_DIR and --resume (auto) all refuse it
    _poison(run_dir / "last.pt", marker)
    _refused(runner.invoke(main, ["eval", str(run_dir / "last.pt")]), run_dir / "last.pt", marker)
    _refused(runner.invoke(main, ["run", "--resume", str(run_dir)]), run_dir / "last.pt", marker)
    _refused(runner.invoke(main, ["run", "--method", "kd", "--resume", *_sets(tmp_path)]), run_dir / "last.pt", marker)

    # a teacher checkpoint handed over by someone
    evil = tmp_path / "teacher.pt"
    torch.save(
        {"state_dict": timm.create_model("test_resnet", num_classes=10).state_dict(), "x": Payload(marker)}, evil
    )
    _refused(
        runner.invoke(main, ["run", "--method", "kd", *_sets(tmp_path, f"teacher.checkpoint={evil}")]), evil, marker
    )

    # the trained-teacher cache: its weights, then its interrupted training's checkpoint
    _poison(teacher_dir / "teacher.pt", marker)
    _refused(runner.invoke(main, ["run", "--method", "kd", *_sets(tmp_path)]), teacher_dir / "teacher.pt", marker)
    compare = ["compare", "--methods", "kd", "--seeds", "1", "--out", str(tmp_path / "cmp"), *_sets(tmp_path)]
    _refused(runner.invoke(main, compare), teacher_dir / "teacher.pt", marker)  # compare's pinned teacher
    (teacher_dir / "teacher.pt").unlink()
    _poison(teacher_dir / "last.pt", marker)
    _refused(runner.invoke(main, ["run", "--method", "kd", *_sets(tmp_path)]), teacher_dir / "last.pt", marker)


def test_run_checkpoints_load_with_weights_only_and_restore_every_rng(tmp_path):
    import random

    import numpy as np

    path = tmp_path / "state.pt"
    checkpoint.save_atomic({"rng": checkpoint.rng_state()}, path)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    torch.load(path, weights_only=True)  # nothing but tensors and plain containers inside
    checkpoint.restore_rng(checkpoint.load(path)["rng"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_teacher_weights_from_safetensors(tmp_path):
    teacher = timm.create_model("test_resnet", num_classes=10)
    weights = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(weights))
    ran = CliRunner().invoke(
        main, ["run", "--method", "kd", "--quiet", *_sets(tmp_path, f"teacher.checkpoint={weights}")]
    )
    assert ran.exit_code == 0, ran.output
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(KdzooError, match="safetensors file .*broken.safetensors cannot be read"):
        checkpoint.load(broken)
