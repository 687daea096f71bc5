"""Multi-teacher KD (CA-MKD's confidence-aware term, EBKD, the average): equal to the authors' code on the
same tensors, and refused in one line without several teachers."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdzoo.config import load_config
from kdzoo.engine import build_trainer
from kdzoo.errors import KdzooError
from kdzoo.losses.mtkd import multi_teacher_kl
from kdzoo.registry import registry
from tests.helpers import tiny_config


def _distill_kl(y_s, y_t, T, is_ca=False):
    """Rorozhl/CA-MKD distiller_zoo/KD.py, DistillKL.forward, transcribed."""
    p_s = F.log_softmax(y_s / T, dim=1)
    p_t = F.softmax(y_t / T, dim=1)
    if is_ca:
        return (nn.KLDivLoss(reduction="none")(p_s, p_t) * (T**2)).sum(-1)
    return nn.KLDivLoss(reduction="batchmean")(p_s, p_t) * (T**2)


def _authors(logit_s, logit_t_list, target, T, ensemble_method):
    """Rorozhl/CA-MKD helper/loops.py, train_distill_multi_teacher: loss_div, transcribed."""
    teacher_num = len(logit_t_list)
    if ensemble_method == "AVERAGE_LOSS":
        return torch.stack([_distill_kl(logit_s, logit_t, T) for logit_t in logit_t_list]).mean(0)
    if ensemble_method == "EBKD":
        loss_div_list = [_distill_kl(logit_s, logit_t, T, is_ca=True) for logit_t in logit_t_list]
        entropy_list = []
        for logit_t in logit_t_list:
            softmax_logit_t = F.softmax(logit_t, dim=1)
            entropy = -(softmax_logit_t) * (torch.log(softmax_logit_t))
            entropy_list.append(entropy.sum(1))
        entropy_sum = torch.stack(entropy_list, dim=0).sum(dim=0).squeeze(dim=0)
        weight = torch.stack([1.0 - (entropy / entropy_sum) for entropy in entropy_list])
        loss_div = torch.stack(loss_div_list)
        return (torch.mul(weight, loss_div).sum()) / (1.0 * loss_div.shape[1] * teacher_num)
    loss_t = torch.stack([nn.CrossEntropyLoss(reduction="none")(logit_t, target) for logit_t in logit_t_list], dim=0)
    attention = (1.0 - F.softmax(loss_t, dim=0)) / (teacher_num - 1)
    loss_div = torch.stack([_distill_kl(logit_s, logit_t, T, is_ca=True) for logit_t in logit_t_list], dim=0)
    return (torch.mul(attention, loss_div).sum()) / (1.0 * loss_div.shape[1] * teacher_num)


@pytest.mark.parametrize(
    ("weighting", "theirs"), [("confidence", "CAMKD"), ("entropy", "EBKD"), ("average", "AVERAGE_LOSS")]
)
@pytest.mark.parametrize("teachers", [2, 3])
def test_the_term_equals_the_authors_code(weighting, theirs, teachers):
    torch.manual_seed(0)
    student = torch.randn(8, 10, dtype=torch.float64, requires_grad=True)
    logits = [3 * torch.randn(8, 10, dtype=torch.float64) for _ in range(teachers)]
    target = torch.randint(0, 10, (8,))
    ours = multi_teacher_kl(student, logits, target, 4.0, weighting)
    expected = _authors(student, logits, target, 4.0, theirs)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=0)
    (grad,) = torch.autograd.grad(ours, student)
    (grad_expected,) = torch.autograd.grad(_authors(student, logits, target, 4.0, theirs), student)
    torch.testing.assert_close(grad, grad_expected, rtol=1e-12, atol=1e-15)


def test_the_confidence_weights_favour_the_teacher_that_knows_the_label():
    """Two teachers, one sure of the label and one sure of another class: CA-MKD weighs the first."""
    from kdzoo.losses.mtkd import teacher_weights

    right, wrong = torch.full((1, 3), -5.0), torch.full((1, 3), -5.0)
    right[0, 0], wrong[0, 1] = 5.0, 5.0
    weights = teacher_weights([right, wrong], torch.tensor([0]), "confidence")
    assert weights[0, 0] > 0.99 and weights[1, 0] < 0.01 and torch.allclose(weights.sum(0), torch.ones(1))


def test_one_teacher_is_refused_in_one_line(tmp_path):
    cfg = tiny_config(["mtkd"], out_dir=str(tmp_path))
    with pytest.raises(KdzooError, match=r"method 'mtkd' distils from 2 teachers or more; list them under teachers:"):
        build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    assert load_config([], [], ["mtkd"], registry().config_classes()).method_configs["mtkd"].weighting == "confidence"
