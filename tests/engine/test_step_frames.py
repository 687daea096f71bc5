"""How many of kdzoo's files one training step crosses (issue 29: at most 6; the list and the count
are in docs/architecture.md, "The flow of one step").

What is counted: the distinct files of the ``kdzoo`` package in which a Python function starts or
resumes (a ``call`` event of ``sys.settrace``) between two passes of the loop's ``for`` over the
batches: drawing one batch from the data and everything the loop does with it, the step included.
The step measured is an epoch's second (the first also enters the ``for``'s set-up), one that
neither logs nor checkpoints. The method's own plugin (``plugins/kd.py``), torch and timm are not
files of ``kdzoo/`` and are not counted.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from pathlib import Path

import torch

import kdzoo
from kdzoo.config import load_config
from kdzoo.engine import Trainer, build_trainer
from kdzoo.models import create_model
from kdzoo.registry import registry

KDZOO = Path(kdzoo.__file__).resolve().parent
DOC = KDZOO.parent / "docs" / "architecture.md"
MOST = 6  # issue 29's acceptance


def _documented() -> set[str]:
    """The files the table of docs/architecture.md's "The flow of one step" lists."""
    text = DOC.read_text()
    section = text[text.index("## The flow of one step") :]
    section = section[: section.index("\n## ", 1)]
    return {line.split("`")[1] for line in section.splitlines() if line.startswith("| `")}


def _loop_line() -> tuple[object, int]:
    """The code of the loop's epoch and the line of its ``for`` over the batches (the one whose body
    calls the step)."""
    function = Trainer._train_epoch
    lines, first = inspect.getsourcelines(function)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    for node in ast.walk(tree):
        if isinstance(node, ast.For) and "self.step(" in ast.unparse(node):
            return function.__code__, first + node.lineno - 1
    raise AssertionError("the loop's for over the batches was not found in Trainer._train_epoch")


class _StepFiles:
    """Records kdzoo's files entered between the ``iteration``-th and the next pass of the loop's ``for``."""

    def __init__(self, iteration: int):
        self.code, self.line = _loop_line()
        self.iteration, self.passes = iteration, 0
        self.files: dict[str, list[str]] = {}  # file -> the functions entered in it, in order

    def __call__(self, frame, event, arg):
        if self.passes == self.iteration:
            self._entered(frame)
        return self._in_loop if frame.f_code is self.code else None

    def _in_loop(self, frame, event, arg):
        if event == "line" and frame.f_lineno == self.line:
            self.passes += 1
            if self.passes == self.iteration:  # the loop's own file, whose frame is running, not entered
                self._entered(frame)
        return self._in_loop

    def _entered(self, frame) -> None:
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(KDZOO):
            self.files.setdefault(path.relative_to(KDZOO).as_posix(), []).append(frame.f_code.co_qualname)


def test_one_kd_step_crosses_at_most_six_files_of_kdzoo(tmp_path):
    # `kdzoo run --method kd` on its default data (the embedded digits), with tiny models and 3 steps
    sets = [
        "teacher.model=test_resnet",
        "student.model=test_efficientnet",
        "data.train_limit=96",
        "data.batch_size=32",
        "train.epochs=1",
        f"train.out_dir={tmp_path}",
    ]
    cfg = load_config([], sets, ["kd"], registry().config_classes())
    assert cfg.train.log_every > 3 and cfg.train.checkpoint_every == 0  # the traced step neither logs nor saves
    torch.manual_seed(0)
    teacher = create_model(cfg.teacher, "teacher", 10, 1)
    trainer = build_trainer(cfg, registry(), tmp_path / "run", teacher=teacher, show_progress=False)
    tracer = _StepFiles(iteration=2)
    sys.settrace(tracer)
    try:
        trainer.fit()
    finally:
        sys.settrace(None)
    assert tracer.passes >= 3, "the traced step did not finish"
    files = sorted(tracer.files)
    listed = "\n".join(f"  {name}: {', '.join(dict.fromkeys(tracer.files[name]))}" for name in files)
    assert "engine/step.py" in files and "engine/objective.py" in files, listed
    assert len(files) <= MOST, f"one kd step crosses {len(files)} files of kdzoo (at most {MOST}):\n{listed}"
    documented = _documented()
    assert set(files) == documented, f"docs/architecture.md's flow of one step lists {sorted(documented)}:\n{listed}"
