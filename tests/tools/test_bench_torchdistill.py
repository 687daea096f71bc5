"""The torchdistill adapter of ``kdzoo bench``: torchdistill's step trains, and computes kdzoo's loss.

torchdistill comes with the test extra (through ``kdzoo[bench]``), so these run in CI, never skipped.
"""

import copy

import pytest
import timm
import torch

import kdzoo
from kdzoo_benchmarks.torchdistill import (
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
    """Load kdzoo's method modules into torchdistill's copies (``method.<method>__<name>``): the same
    initial weights on both sides. Returns how many were loaded."""
    loaded = 0
    for model in (box.student_model, box.teacher_model):
        for key, module in getattr(model, "method", {}).items():
            method, name = key.split("__", 1)
            if name not in objective.method_modules[method]:
                continue  # a view of a synced module (e.g. VID's outputs reshaped for torchdistill)
            module.load_state_dict(objective.method_modules[method][name].state_dict())
            loaded += 1
    return loaded


def _kdzoo_objective(stack, teacher, student):
    # a copy: pre-activation taps hook the teacher, and the module's teacher must stay hook-free
    return kdzoo.get_method(stack.split("+"), teacher=copy.deepcopy(teacher), student=student, img_size=32)


STACKS = [
    "kd",
    "fitnets",
    "at",
    "rkd",
    "dist",
    "pkt",
    "vid",
    "ickd",
    "srd",
    "pad",
    "reviewkd",
    "kd+at+rkd",
    "dist+at",
    "pkt+rkd+srd",
]


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
        assert not torch.equal(step.box.student_model.method["fitnets__regressor"].conv.weight, regressor.conv.weight)
    assert (
        synced == {"fitnets": 1, "vid": 1, "ickd": 1, "srd": 3, "pad": 2, "reviewkd": 1}.get(stack, 0) or "+" in stack
    )


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
    result = objective.loss(kdzoo.Batch(x, y))
    expected, s_logits = result.loss.detach(), result.logits
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


def _first_steps(pair, stack):
    """kdzoo's first-step loss and unweighted terms, and torchdistill's first-step loss, from the same
    student and the same method-module weights."""
    teacher, student, x, y = pair
    objective = _kdzoo_objective(stack, teacher, copy.deepcopy(student).train())
    result = objective.loss(kdzoo.Batch(x, y))
    step = torchdistill_step(stack, teacher, copy.deepcopy(student), x, y)
    _same_method_modules(step.box, objective)
    step()
    return result.loss.item(), {k: v.detach() for k, v in result.terms.items()}, step.last_loss.item()


def test_sp_first_step_equals_kdzoo_once_torchdistills_rows_are_l2_normalised(pair, monkeypatch):
    import torchdistill.losses.mid_level as td

    ours, _, theirs_l1 = _first_steps(pair, "sp")
    assert abs(theirs_l1 - ours) > 1e-4 * ours  # torchdistill's L1 rows: another number
    with monkeypatch.context() as patch:
        patch.setattr(td, "normalize", lambda g, p: torch.nn.functional.normalize(g, p=2.0))
        ours, _, theirs = _first_steps(pair, "sp")
    assert theirs == pytest.approx(ours, rel=1e-4)


def test_cc_first_step_is_torchdistills_unsquared_norm_of_the_same_kernels(pair):
    ours, terms, theirs = _first_steps(pair, "cc")
    batch = pair[2].shape[0]
    assert ours == pytest.approx(terms["ce"].item() + 0.02 * terms["cc"].item(), rel=1e-5)
    assert theirs == pytest.approx(terms["ce"].item() + 0.02 * terms["cc"].sqrt().item() / batch, rel=1e-4)


def test_dist_plus_first_step_differs_only_by_torchdistills_raw_channel_correlation(pair):
    ours, terms, theirs = _first_steps(pair, "dist_plus")
    assert theirs == pytest.approx(ours + 1.0 * (1 - 2 * terms["dist_channel"].item()), rel=1e-4)


def test_ft_first_step_of_its_main_stage_equals_kdzoo(pair):
    teacher, student, x, y = pair
    objective = _kdzoo_objective("ft", teacher, copy.deepcopy(student).train())
    main_stage = objective.schedule(1)[-1]  # the schedule as the run builds it
    expected, terms, _ = objective.compute(x, y, main_stage)
    assert set(terms) == {"ce", "ft"}
    step = torchdistill_step("ft", teacher, copy.deepcopy(student), x, y)
    assert _same_method_modules(step.box, objective) == 2
    step()
    assert step.last_loss.item() == pytest.approx(expected.item(), rel=1e-4)
