"""KD (Hinton et al.): soft_target_kl and KDLoss against numbers worked out by hand from the paper's
formula (plain ``math`` on small Python lists, never the code under test), and logit standardization
in its exact relation to torchdistill 1.1.5's LogitStdKDLoss."""

from __future__ import annotations

import math

import pytest
import torch
from torchdistill.losses.mid_level import LogitStdKDLoss

from kdzoo.api import soft_target_kl
from kdzoo.losses.kd import standardize
from kdzoo.registry import run_manager
from kdzoo_plugins.kd import HintonKD, KDConfig, KDLoss
from tests.helpers import logit_pair, logit_terms, logits_only, td_io

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]


TEACHER = [[2.0, 1.0, 0.0], [1.5, 0.5, -0.5]]


TARGETS = [1, 2]


def _log_softmax(row: list[float], t: float = 1.0) -> list[float]:
    scaled = [v / t for v in row]
    top = max(scaled)
    log_z = top + math.log(sum(math.exp(v - top) for v in scaled))
    return [v - log_z for v in scaled]


def _kl_rows(student: list[list[float]], teacher: list[list[float]], t: float) -> list[float]:
    """Per-sample sum_c p_t(c) * (log p_t(c) - log p_s(c)) at temperature t."""
    out = []
    for s_row, t_row in zip(student, teacher, strict=True):
        log_ps, log_pt = _log_softmax(s_row, t), _log_softmax(t_row, t)
        out.append(sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_pt, log_ps, strict=True)))
    return out


def hand_soft_target_kl(student, teacher, t: float) -> float:
    rows = _kl_rows(student, teacher, t)
    return t * t * sum(rows) / len(rows)


def hand_cross_entropy(logits, targets) -> float:
    return -sum(_log_softmax(row)[y] for row, y in zip(logits, targets, strict=True)) / len(targets)


def _t(data) -> torch.Tensor:
    return torch.tensor(data, dtype=torch.float64)


def test_hand_helpers_sanity():
    # The helpers themselves: a softmax sums to one, and KL of a distribution with itself is 0.
    assert math.isclose(sum(math.exp(v) for v in _log_softmax([1.0, 2.0, 3.0], 2.0)), 1.0)
    assert hand_soft_target_kl(TEACHER, TEACHER, 4.0) == pytest.approx(0.0, abs=1e-15)
    # softmax([0, ln 3]) = [1/4, 3/4]: the textbook two-class KL, by hand.
    kl = hand_soft_target_kl([[0.0, 0.0]], [[0.0, math.log(3.0)]], 1.0)
    assert kl == pytest.approx(0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5))


@pytest.mark.parametrize("temperature", [2.0, 4.0])
def test_soft_target_kl_matches_hand_formula(temperature):
    expected = hand_soft_target_kl(STUDENT, TEACHER, temperature)
    got = soft_target_kl(_t(STUDENT), _t(TEACHER), temperature)
    assert got.dim() == 0
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # float32 inputs give the same number within single precision.
    got32 = soft_target_kl(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature)
    assert got32.item() == pytest.approx(expected, rel=1e-5)


def test_soft_target_kl_known_value_two_classes():
    # Student uniform, teacher [1/4, 3/4] at T=1: KL = 1/4 ln(1/2) + 3/4 ln(3/2), times T^2 = 1.
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    got = soft_target_kl(_t([[0.0, 0.0]]), _t([[0.0, math.log(3.0)]]), 1.0)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # Same logits scaled by T=2 give the same distributions, so the value is T^2 times larger.
    got_t2 = soft_target_kl(_t([[0.0, 0.0]]), _t([[0.0, 2 * math.log(3.0)]]), 2.0)
    assert got_t2.item() == pytest.approx(4.0 * expected, rel=1e-12)


def test_soft_target_kl_zero_when_equal():
    assert soft_target_kl(_t(TEACHER), _t(TEACHER), 4.0).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("temperature", [2.0, 4.0])
def test_soft_target_kl_is_batchmean_not_mean(temperature):
    rows = _kl_rows(STUDENT, TEACHER, temperature)
    num_classes = len(STUDENT[0])
    batchmean = temperature**2 * sum(rows) / len(rows)
    elementwise_mean = temperature**2 * sum(rows) / (len(rows) * num_classes)  # PyTorch's 'mean'
    got = soft_target_kl(_t(STUDENT), _t(TEACHER), temperature).item()
    assert got == pytest.approx(batchmean, rel=1e-10)
    assert got != pytest.approx(elementwise_mean, rel=1e-3)
    assert got / elementwise_mean == pytest.approx(num_classes, rel=1e-10)


def test_soft_target_kl_averages_over_batch_not_sums():
    # Repeating the batch must not change the value (mean over samples).
    one = soft_target_kl(_t(STUDENT), _t(TEACHER), 4.0)
    twice = soft_target_kl(_t(STUDENT * 2), _t(TEACHER * 2), 4.0)
    assert twice.item() == pytest.approx(one.item(), rel=1e-12)


def test_soft_target_kl_gradient_flows_to_student_only():
    student = _t(STUDENT).requires_grad_(True)
    teacher = _t(TEACHER).requires_grad_(True)
    soft_target_kl(student, teacher, 4.0).backward()
    assert teacher.grad is None
    assert student.grad is not None
    assert student.grad.abs().sum().item() > 0
    # d/ds [T^2 * KL / B] = T * (p_s - p_t) / B, by hand for the first logit.
    t = 4.0
    ps = [math.exp(v) for v in _log_softmax(STUDENT[0], t)]
    pt = [math.exp(v) for v in _log_softmax(TEACHER[0], t)]
    assert student.grad[0, 0].item() == pytest.approx(t * (ps[0] - pt[0]) / len(STUDENT), rel=1e-9)


def test_kdloss_defaults():
    loss = KDLoss()
    assert loss.temperature == 4.0
    assert loss.ce_weight == pytest.approx(0.1)
    assert loss.kd_weight == pytest.approx(0.9)


def test_kdloss_with_targets_matches_hand_formula():
    t, ce_w, kd_w = 4.0, 0.1, 0.9
    expected = kd_w * hand_soft_target_kl(STUDENT, TEACHER, t) + ce_w * hand_cross_entropy(STUDENT, TARGETS)
    got = KDLoss()(_t(STUDENT), _t(TEACHER), torch.tensor(TARGETS))
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_kdloss_custom_weights_and_temperature():
    t, ce_w, kd_w = 2.0, 0.5, 0.5
    expected = kd_w * hand_soft_target_kl(STUDENT, TEACHER, t) + ce_w * hand_cross_entropy(STUDENT, TARGETS)
    got = KDLoss(temperature=t, ce_weight=ce_w, kd_weight=kd_w)(_t(STUDENT), _t(TEACHER), torch.tensor(TARGETS))
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_kdloss_without_targets_is_soft_term_only():
    expected = 0.9 * hand_soft_target_kl(STUDENT, TEACHER, 4.0)
    got = KDLoss()(_t(STUDENT), _t(TEACHER))
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_kdloss_teacher_gets_no_gradient():
    student = _t(STUDENT).requires_grad_(True)
    teacher = _t(TEACHER).requires_grad_(True)
    KDLoss()(student, teacher, torch.tensor(TARGETS)).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum().item() > 0


def test_logit_standardized_kd_equals_torchdistill_up_to_t_squared():
    """The paper's code multiplies the KL by T^2; torchdistill's LogitStdKDLoss does not."""
    s, t = logit_pair(3)
    temperature = 2.0
    kd = HintonKD(KDConfig(temperature=temperature, logit_standardization=True))
    terms = logit_terms(run_manager({"kd": kd}), logits_only(s), t)
    theirs = LogitStdKDLoss(".", "output", ".", "output", temperature=temperature, alpha=0.5)(td_io(s), td_io(t))
    assert terms["kd"].item() == pytest.approx(temperature**2 * theirs.item(), rel=1e-5)
    z = standardize(s)
    assert torch.allclose(z.mean(1), torch.zeros(16), atol=1e-5) and torch.allclose(z.std(1), torch.ones(16), atol=1e-5)
    with pytest.raises(TypeError):  # its documented default alpha=None: 1 - None
        LogitStdKDLoss(".", "output", ".", "output", temperature=temperature)
