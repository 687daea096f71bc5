"""The torchdistill adapter of ``kdzoo bench``: torchdistill's step trains, and computes kdzoo's loss.

torchdistill comes with the test extra (through ``kdzoo[bench]``), so these run in CI, never skipped.
"""

import copy

import pytest
import timm
import torch

import kdzoo
from kdzoo.tools.torchdistill import (
    TORCHDISTILL_METHODS,
    torchdistill_available,
    torchdistill_step,
    torchdistill_supports,
)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    teacher = timm.create_model("test_resnet", num_classes=10).eval()
    student = timm.create_model("test_efficientnet", num_classes=10)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    return teacher, student, x, y


def _same_method_modules(box, objective):
    """Load kdzoo's method modules into torchdistill's copies (``method.<method>_<name>``): the same
    initial weights on both sides. Returns how many were loaded."""
    loaded = 0
    for model in (box.student_model, box.teacher_model):
        for key, module in getattr(model, "method", {}).items():
            method, name = key.split("_", 1)
            module.load_state_dict(objective.method_modules[method][name].state_dict())
            loaded += 1
    return loaded


def _kdzoo_objective(stack, teacher, student):
    return kdzoo.get_method(stack.split("+"), teacher=teacher, student=student, img_size=32)


STACKS = ["kd", "fitnets", "at", "rkd", "dist", "pkt", "ickd", "srd", "pad", "kd+at+rkd", "dist+at", "pkt+rkd+srd"]


@pytest.mark.parametrize("stack", STACKS)
def test_first_step_loss_equals_kdzoo_and_the_student_trains(pair, stack):
    teacher, student, x, y = pair
    ours, theirs = copy.deepcopy(student).train(), copy.deepcopy(student)
    objective = _kdzoo_objective(stack, teacher, ours)
    expected = objective(x, y).detach()

    step = torchdistill_step(stack, teacher, theirs, x, y)
    synced = _same_method_modules(step.box, objective)
    before = [p.detach().clone() for p in theirs.parameters()]
    step()

    assert torch.isfinite(step.last_loss)
    assert step.last_loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(before, theirs.parameters(), strict=True))
    if "fitnets" in stack:
        regressor = objective.method_modules["fitnets"]["regressor"]
        assert not torch.equal(step.box.student_model.method["fitnets_regressor"].conv.weight, regressor.conv.weight)
    assert synced == {"fitnets": 1, "ickd": 1, "srd": 3, "pad": 2}.get(stack, 0) or "+" in stack


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
    assert {"kd", "fitnets", "at", "rkd", "ickd", "srd", "skd", "pad"} <= TORCHDISTILL_METHODS
    assert torchdistill_supports("kd+at+rkd") and not torchdistill_supports("kd+kd")
    with pytest.raises(kdzoo.KdzooError, match="no equivalent"):
        torchdistill_step("crd", teacher, copy.deepcopy(student), x, y)


def test_skd_first_step_differs_from_kdzoo_only_by_torchdistills_per_sample_mask(pair):
    """The authors' code (and kdzoo) scales the batch's KL by the masked fraction; torchdistill's
    code mode masks each sample's KL: the totals differ by exactly that, the direction term agrees."""
    from torchdistill.losses.mid_level import SKDInstanceLoss

    from kdzoo.losses.skd import skd_instance_loss

    teacher, student, x, y = pair
    objective = _kdzoo_objective("skd", teacher, copy.deepcopy(student).train())
    expected = objective(x, y).detach()
    s_logits = objective.last_logits
    with torch.no_grad():
        t_logits = teacher(x)
    io = {"student_module_path": ".", "student_module_io": "output"}
    io |= {"teacher_module_path": ".", "teacher_module_io": "output"}
    per_sample = SKDInstanceLoss(**io, temperature=4.0, mode="code")(
        {".": {"output": s_logits}}, {".": {"output": t_logits}}
    )
    step = torchdistill_step("skd", teacher, copy.deepcopy(student), x, y)
    step()
    gap = 0.9 * (per_sample - skd_instance_loss(s_logits, t_logits, 4.0, "code"))
    assert step.last_loss.item() - expected.item() == pytest.approx(gap.item(), abs=1e-4 * expected.item())
