"""The student's forward runs when a loss term first reads its outputs: once in every ordinary step,
never in a stage that trains a teacher-side module alone (SSKD's rotation head, FT's paraphraser)."""

import pytest
import timm
import torch

import kdzoo
from kdzoo.engine.extract import LazyOutputs


def _counted(objective):
    """The calls of the objective's student forward (its tap), counted."""
    calls, tap = [], objective.student_tap

    def counting(x):
        calls.append(1)
        return tap(x)

    objective.student_tap = counting
    return calls


@pytest.mark.parametrize("method", ["sskd", "ft"])
def test_a_stage_training_a_teacher_side_module_alone_runs_no_student_forward(method):
    torch.manual_seed(0)
    student, teacher = timm.create_model("test_resnet", num_classes=10), timm.create_model("resnet10t", num_classes=10)
    objective = kdzoo.get_method(method, teacher=teacher.eval(), student=student, img_size=32)
    calls = _counted(objective)
    teacher_side, distill = objective.schedule(2)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    _, terms, _ = objective.compute(x, y, teacher_side)
    assert terms and all(t.requires_grad for t in terms.values()) and not calls  # its term, no student forward
    _, terms, _ = objective.compute(x, y, distill)
    assert len(calls) == 1 and "ce" in terms  # every term read the student: one forward, shared


def test_the_terms_are_those_of_the_eager_forward():
    from kdzoo.engine.extract import run_teacher

    torch.manual_seed(0)
    student, teacher = timm.create_model("test_resnet", num_classes=10), timm.create_model("resnet10t", num_classes=10)
    objective = kdzoo.get_method(["kd", "at"], teacher=teacher.eval(), student=student, img_size=32)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    _, lazy_terms, _ = objective.compute(x, y)
    eager = objective.terms(objective.student_tap(x), run_teacher(objective.teacher_tap, x), y, kdzoo.WHOLE_RUN)
    assert set(lazy_terms) == set(eager) == {"ce", "kd", "at"}
    for name, value in eager.items():
        torch.testing.assert_close(lazy_terms[name], value)


def test_lazy_outputs_compute_once_and_slice_without_computing():
    made = []

    def compute():
        made.append(1)
        return kdzoo.Outputs(torch.arange(6.0).reshape(3, 2), {0: torch.ones(3, 1, 2, 2)}, torch.zeros(3, 4))

    lazy = LazyOutputs(compute)
    rows = lazy.rows(slice(1, 3))
    assert not made and not lazy.computed and isinstance(rows, kdzoo.Outputs)
    assert rows.logits.tolist() == [[2.0, 3.0], [4.0, 5.0]] and len(made) == 1
    assert lazy.feature(0).shape == (3, 1, 2, 2) and lazy.embedding.shape == (3, 4) and len(made) == 1
    with pytest.raises(kdzoo.KdzooError, match="feature 2 was not tapped"):
        lazy.feature(2)
