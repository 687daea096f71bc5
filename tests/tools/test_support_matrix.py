"""docs/support-matrix.md states what scripts/gen_support_matrix.py generates (issue 31), and SimKD
trains an EfficientNet student.

Generating the whole matrix (every method x student family x teacher family, 360 cells) takes ~5
minutes on a CPU, so the test re-runs a deterministic, representative subset of its cells (about 60, in
~40 s) and compares each with the file: every method on one pair (the pairs taken in turn, method after
method, so every column is visited), every pair on SimKD (whose refusal depended on the student
family), and every refusal (its reason, word for word; cheap: a method refuses before its first step).
The file's rows and columns are checked against the registered methods and the families in full: a new
method or family fails the test until the file is regenerated (``python scripts/gen_support_matrix.py``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import timm
import torch

import kdzoo
from kdzoo.tools.support_matrix import STUDENTS, TEACHERS, TRAINS, methods, run_cell

ROOT = Path(__file__).resolve().parents[2]
PAIRS = [(s.name, t.name) for s in STUDENTS for t in TEACHERS]


def _script():
    spec = importlib.util.spec_from_file_location("gen_support_matrix", ROOT / "scripts" / "gen_support_matrix.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_support_matrix"] = module
    spec.loader.exec_module(module)
    return module


DOC = _script().parse((ROOT / "docs" / "support-matrix.md").read_text())


def _subset() -> list[tuple[str, str, str]]:
    names = sorted({method for method, _, _ in DOC})
    chosen = [(method, *PAIRS[i % len(PAIRS)]) for i, method in enumerate(names)]
    chosen += [("simkd", *pair) for pair in PAIRS]
    chosen += [cell for cell, text in sorted(DOC.items()) if text != TRAINS]  # a refusal comes before any step
    return list(dict.fromkeys(chosen))


def test_the_matrix_has_a_row_per_registered_method_and_a_column_per_pair_of_families():
    assert sorted({method for method, _, _ in DOC}) == methods(), "run: python scripts/gen_support_matrix.py"
    assert set(DOC) == {(method, *pair) for method in methods() for pair in PAIRS}


@pytest.mark.parametrize("cell", _subset(), ids=lambda c: "-".join(c).replace(" ", "_"))
def test_a_cell_of_the_matrix_is_what_the_method_does(cell, tmp_path):
    method, student, teacher = cell
    got = run_cell(method, student, teacher, tmp_path).text
    assert got == DOC[cell], f"{cell}: docs/support-matrix.md is out of date: python scripts/gen_support_matrix.py"


def test_simkd_trains_an_efficientnet_student():
    """One step: a finite loss, and gradients reach the projector and the student's last stage (the map
    it projects), while EfficientNet's conv_head (after that stage) is left out of the network."""
    torch.manual_seed(0)
    teacher = timm.create_model("resnet10t", num_classes=10).eval()
    student = timm.create_model("test_efficientnet", num_classes=10)
    assert student.num_features != student.feature_info[-1]["num_chs"]  # forward_features ends past its last stage
    objective = kdzoo.get_method("simkd", teacher=teacher, student=student, img_size=32)
    optimizer = torch.optim.SGD([*student.parameters(), *objective.parameters()], lr=0.1)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    loss = objective(x, y)
    assert torch.isfinite(loss)
    loss.backward()
    projector = objective.method_modules["simkd"]["projector"]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())
    last = student.get_submodule(student.feature_info[-1]["module"])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in last.parameters())
    before = {k: v.clone() for k, v in projector.state_dict().items()}
    optimizer.step()
    assert any(not torch.equal(v, projector.state_dict()[k]) for k, v in before.items())
    assert objective.deployed_model()(x).shape == (4, 10)
