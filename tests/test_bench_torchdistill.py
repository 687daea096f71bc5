"""The torchdistill adapter of ``kdzoo bench``: torchdistill's step trains, and computes kdzoo's loss.

torchdistill comes with the test extra (through ``kdzoo[bench]``), so these run in CI, never skipped.
"""

import copy

import pytest
import timm
import torch

import kdzoo
from kdzoo.tools.torchdistill import TORCHDISTILL_METHODS, torchdistill_available, torchdistill_step


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    teacher = timm.create_model("test_resnet", num_classes=10).eval()
    student = timm.create_model("test_efficientnet", num_classes=10)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    return teacher, student, x, y


def _kdzoo_objective(stack, teacher, student):
    return kdzoo.get_method(stack.split("+"), teacher=teacher, student=student, img_size=32)


@pytest.mark.parametrize("stack", ["kd", "fitnets", "at", "rkd", "dist", "pkt", "kd+at+rkd", "dist+at", "pkt+rkd"])
def test_first_step_loss_equals_kdzoo_and_the_student_trains(pair, stack):
    teacher, student, x, y = pair
    ours, theirs = copy.deepcopy(student).train(), copy.deepcopy(student)
    objective = _kdzoo_objective(stack, teacher, ours)
    expected = objective(x, y).detach()

    step = torchdistill_step(stack, teacher, theirs, x, y)
    if "fitnets" in stack:  # same regressor weights on both sides
        regressor = objective.method_modules["fitnets"]["regressor"]
        step.box.student_model.regressor.load_state_dict(regressor.state_dict())
    before = [p.detach().clone() for p in theirs.parameters()]
    step()

    assert torch.isfinite(step.last_loss)
    assert step.last_loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(before, theirs.parameters(), strict=True))
    if "fitnets" in stack:
        assert not torch.equal(step.box.student_model.regressor.conv.weight, regressor.conv.weight)


def test_adapter_leaves_the_callers_teacher_alone_and_is_silent(pair, capsys):
    teacher, student, x, y = pair
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    step = torchdistill_step("kd+at+rkd", teacher, copy.deepcopy(student), x, y)
    step()
    step()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in teacher.modules())
    assert all(torch.equal(state[k], v) for k, v in teacher.state_dict().items())
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_method_set_and_refusals(pair):
    teacher, student, x, y = pair
    assert torchdistill_available()
    assert {"kd", "fitnets", "at", "rkd", "kd+at+rkd"} <= TORCHDISTILL_METHODS
    with pytest.raises(kdzoo.KdzooError, match="no equivalent"):
        torchdistill_step("crd", teacher, copy.deepcopy(student), x, y)
