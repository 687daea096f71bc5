"""SKD: the paper forms equal torchdistill 1.1.5's, the code form is the authors' Distiller/SKD.py and
relates exactly to torchdistill's code mode; the teacher gets no gradient."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchdistill.losses.mid_level as td

from kdzoo.losses.skd import skd_direction_loss, skd_instance_loss
from tests.helpers import logit_pair, td_io


def _skd_keys():
    keys = {"student_module_path": ".", "student_module_io": "output"}
    return keys | {"teacher_module_path": ".", "teacher_module_io": "output"}


@pytest.mark.parametrize("temperature", [4.0, 2.0])
def test_skd_paper_forms_equal_torchdistill(temperature):
    s, t = logit_pair(5)
    inst = td.SKDInstanceLoss(**_skd_keys(), temperature=temperature, mode="paper")(td_io(s), td_io(t))
    assert skd_instance_loss(s, t, temperature, "paper").item() == pytest.approx(inst.item(), rel=1e-5)
    dirn = td.SKDDirectionLoss(**_skd_keys(), tikhonov=0.1, mode="paper")(td_io(s), td_io(t))
    assert skd_direction_loss(s, t, 0.1, "paper").item() == pytest.approx(dirn.item(), rel=1e-5)


@pytest.mark.parametrize("tikhonov", [0.1, 0.5])
def test_skd_code_direction_equals_torchdistill(tikhonov):
    s, t = logit_pair(6, batch=32)
    theirs = td.SKDDirectionLoss(**_skd_keys(), tikhonov=tikhonov, mode="code")(td_io(s), td_io(t))
    assert skd_direction_loss(s, t, tikhonov, "code").item() == pytest.approx(theirs.item(), rel=1e-5)


def _authors_skd(s, t, temperature, tik):
    """Distiller/SKD.py of the authors' repository, written out with numpy's percentile as they do."""
    kl = F.kl_div(F.log_softmax(s / temperature, 1), F.softmax(t / temperature, 1), reduction="none").sum(1).mean()
    kl = kl * temperature**2
    p = F.softmax(t, dim=1)
    confidence = p.max(dim=1).values
    mask = confidence.le(float(np.percentile(confidence.numpy(), 50)))
    classes = p.sum(0)
    class_mask = classes.le(float(np.percentile(classes.numpy(), 50)))
    n = s.shape[1]
    gs, gt = F.normalize(s, dim=1), F.normalize(t, dim=1)
    diff = gs @ gs.T / n - gt @ gt.T / n
    cov = torch.cov(diff.T) + tik * torch.eye(diff.shape[1])
    inv = torch.cholesky_inverse(torch.linalg.cholesky(cov))
    direction = torch.sqrt(torch.einsum("bi,ij,bj->b", diff, inv, diff)).mean()
    return (kl * mask).mean(), (direction * class_mask).mean()


@pytest.mark.parametrize("batch", [16, 17])
def test_skd_code_form_is_the_authors_code_and_relates_exactly_to_torchdistill(batch):
    s, t = logit_pair(7, batch=batch)
    instance, direction = _authors_skd(s, t, 4.0, 0.1)
    assert skd_instance_loss(s, t, 4.0, "code").item() == pytest.approx(instance.item(), rel=1e-5)
    assert skd_direction_loss(s, t, 0.1, "code").item() == pytest.approx(direction.item(), rel=1e-5)
    # the authors' mask scales the batch's KL by the fraction of samples at or below the median;
    # torchdistill's code mode masks each sample's KL instead: another number
    paper = td.SKDInstanceLoss(**_skd_keys(), temperature=4.0, mode="paper")(td_io(s), td_io(t))
    confidence = F.softmax(t, dim=1).max(dim=1).values
    fraction = confidence.le(torch.quantile(confidence, 0.5)).float().mean()
    assert instance.item() == pytest.approx((paper * 4.0**2 * fraction).item(), rel=1e-5)
    per_sample = td.SKDInstanceLoss(**_skd_keys(), temperature=4.0, mode="code")(td_io(s), td_io(t))
    assert abs(per_sample.item() - instance.item()) > 1e-3 * instance.item()


def test_skd_terms_give_the_teacher_no_gradient():
    s, t = logit_pair(8)
    s.requires_grad_(True)
    t.requires_grad_(True)
    (skd_instance_loss(s, t) + skd_direction_loss(s, t)).backward()
    assert t.grad is None and torch.isfinite(s.grad).all()
