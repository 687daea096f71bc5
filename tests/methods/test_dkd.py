"""DKD (built in): its terms against values computed by hand from the paper's equations and
against mdistiller's masking convention, its warm-up weights, its loss module and library use."""

from __future__ import annotations

import math

import pytest
import torch

import kdzoo
from kdzoo.losses.dkd import dkd_terms
from kdzoo.registry import run_manager
from kdzoo_plugins.dkd import DKD, NCKD, TCKD, DKDConfig, DKDLoss

STUDENT = [[1.0, 2.0, 0.5, -1.0], [0.0, 3.0, -2.0, 1.0]]
TEACHER = [[3.0, 1.0, 0.0, -2.0], [1.0, 2.0, -1.0, 4.0]]
TARGETS = [0, 3]


# ---------------------------------------------------------------------------------- the formula by hand
def _softmax(row, temperature):
    exps = [math.exp(v / temperature) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def _by_hand(temperature):
    """TCKD and NCKD for the 2x4 example with plain floats: per sample, then T^2 * mean over the batch."""
    tckd = nckd = 0.0
    for s_row, t_row, target in zip(STUDENT, TEACHER, TARGETS, strict=True):
        p_s, p_t = _softmax(s_row, temperature), _softmax(t_row, temperature)
        # TCKD: KL between the binary distributions [p_target, 1 - p_target]
        tckd += _kl([p_t[target], 1 - p_t[target]], [p_s[target], 1 - p_s[target]])
        # NCKD: KL between softmaxes over the three non-target logits only
        s_rest = [v for i, v in enumerate(s_row) if i != target]
        t_rest = [v for i, v in enumerate(t_row) if i != target]
        nckd += _kl(_softmax(t_rest, temperature), _softmax(s_rest, temperature))
    batch = len(TARGETS)  # batchmean: summed over classes, averaged over the 2 samples (not over 2 x 4)
    return temperature**2 * tckd / batch, temperature**2 * nckd / batch


@pytest.mark.parametrize("temperature", [4.0, 1.0])
def test_terms_match_hand_computed_values(temperature):
    tckd, nckd = dkd_terms(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGETS), temperature)
    want_tckd, want_nckd = _by_hand(temperature)
    assert tckd.ndim == 0 and nckd.ndim == 0
    assert tckd.item() == pytest.approx(want_tckd, rel=1e-5, abs=1e-7)
    assert nckd.item() == pytest.approx(want_nckd, rel=1e-5, abs=1e-7)


def test_same_as_masking_the_target_logit_with_minus_1000():
    """mdistiller's NCKD subtracts 1000 from the scaled target logit instead of dropping the column."""
    torch.manual_seed(0)
    s, t, y, temp = torch.randn(6, 10), 3 * torch.randn(6, 10), torch.randint(0, 10, (6,)), 4.0
    mask = torch.nn.functional.one_hot(y, 10).float()
    log_q = torch.log_softmax(s / temp - 1000.0 * mask, dim=1)
    p = torch.softmax(t / temp - 1000.0 * mask, dim=1)
    masked_nckd = (p * (torch.log(p.clamp_min(1e-30)) - log_q)).sum() / 6 * temp**2
    assert dkd_terms(s, t, y, temp)[1].item() == pytest.approx(masked_nckd.item(), rel=1e-5)


def test_kd_decomposes_into_tckd_and_weighted_nckd():
    """The paper's identity: KD = TCKD + (1 - p_t^teacher) * NCKD, sample by sample."""
    from kdzoo.api import soft_target_kl

    torch.manual_seed(1)
    s, t, y = torch.randn(4, 5), 2 * torch.randn(4, 5), torch.randint(0, 5, (4,))
    for i in range(4):
        tckd, nckd = dkd_terms(s[i : i + 1], t[i : i + 1], y[i : i + 1], 4.0)
        p_target = torch.softmax(t[i] / 4.0, dim=0)[y[i]]
        kd = soft_target_kl(s[i : i + 1], t[i : i + 1], 4.0)
        assert (tckd + (1 - p_target) * nckd).item() == pytest.approx(kd.item(), rel=1e-4)


def test_gradient_reaches_the_student_only_and_equal_logits_cost_nothing():
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    tckd, nckd = dkd_terms(student, teacher, torch.tensor(TARGETS))
    (tckd + nckd).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    same = dkd_terms(torch.tensor(STUDENT), torch.tensor(STUDENT), torch.tensor(TARGETS))
    assert all(abs(v.item()) < 1e-6 for v in same)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="at least 2 classes"):
        dkd_terms(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="one class index per sample"):
        dkd_terms(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 4))


# ---------------------------------------------------------------------------------- weights and warm-up
@pytest.mark.parametrize(
    "epoch, ramp",
    [(0, 1 / 20), (10, 11 / 20), (30, 1.0)],  # mdistiller's min(epoch / 20, 1) with its epochs counted from 1
)
def test_warmup_weights(epoch, ramp):
    pm = run_manager({"dkd": DKD(DKDConfig())})  # the hook as kdzoo's engine calls it, with every argument
    (weights,) = pm.hook.kdzoo_loss_weights(
        stage=kdzoo.Stage("train", 240), epoch=epoch, progress=epoch / 240, plan=None
    )
    assert weights == pytest.approx({"ce": 1.0, TCKD: 1.0 * ramp, NCKD: 8.0 * ramp})


def test_no_warmup_when_switched_off():
    weights = DKD(DKDConfig(warmup_epochs=0, alpha=0.5, beta=2.0)).kdzoo_loss_weights(epoch=0)
    assert weights == {"ce": 1.0, TCKD: 0.5, NCKD: 2.0}


def test_loss_module_for_your_own_loop():
    criterion = DKDLoss()
    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGETS)
    tckd, nckd = _by_hand(4.0)
    ce = torch.nn.functional.cross_entropy(s, y).item()
    assert criterion(s, t, y).item() == pytest.approx(ce + tckd + 8 * nckd, rel=1e-5)
    assert criterion(s, t, y, epoch=0).item() == pytest.approx(ce + (tckd + 8 * nckd) / 20, rel=1e-5)
    assert set(criterion.last_terms) == {"ce", TCKD, NCKD}


# ---------------------------------------------------------------------------------- through kdzoo
def test_registered_with_a_typed_config():
    info = kdzoo.list_methods()["dkd"]
    assert info.distribution == "kdzoo" and info.plugin == "dkd" and info.kind == "logit"
    cfg = kdzoo.method_config("dkd", beta=6)
    assert cfg.beta == 6.0 and isinstance(cfg.beta, float) and cfg.temperature == 4.0
    with pytest.raises(kdzoo.KdzooError, match="dkd.temperature"):
        kdzoo.method_config("dkd", temperature=0)


def test_library_use_follows_the_warmup_through_compute():
    import timm

    torch.manual_seed(0)
    teacher = timm.create_model("test_resnet", num_classes=10).eval()
    student = timm.create_model("test_resnet", num_classes=10)
    distiller = kdzoo.get_method("dkd", teacher=teacher, student=student, img_size=32)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    result = distiller.loss(kdzoo.Batch(images, labels))  # When(): the first epoch, as forward() is
    result.loss.backward()
    assert set(result.terms) == {"ce", TCKD, NCKD}
    assert result.weights[NCKD] == pytest.approx(8 / 20)
    _, terms, weights = distiller.compute(images, labels, epoch=30)
    assert weights == pytest.approx({"ce": 1.0, TCKD: 1.0, NCKD: 8.0}) and set(terms) == {"ce", TCKD, NCKD}
