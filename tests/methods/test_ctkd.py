"""CTKD: the student's and the temperature's gradients equal the authors' gradient reversal layer's,
along the cosine curriculum."""

import pytest
import torch
import torch.nn.functional as F

from kdzoo.registry import run_manager
from tests.helpers import logit_pair, logits_only


class _GradientReversal(torch.autograd.Function):
    """The authors' reversal layer: identity forward, gradient times lambda backward."""

    @staticmethod
    def forward(ctx, x, lam):
        ctx.lam = lam
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return ctx.lam * grad, None


@pytest.mark.parametrize("epoch, lam", [(0, 0.0), (5, -0.5), (10, -1.0), (40, -1.0)])
def test_ctkd_gradients_are_the_reversal_layers(epoch, lam):
    from kdzoo_plugins.ctkd import CTKDConfig, CurriculumTemperatureKD

    method = CurriculumTemperatureKD(CTKDConfig())
    pm = run_manager({"ctkd": method})
    (modules,) = pm.hook.kdzoo_build_modules(teacher=None, student=None, train_set=None, plan=None)
    s0, t = logit_pair(6, classes=10)
    s = s0.clone().requires_grad_()
    arguments = {"targets": None, "stage": None, "indices": None, "views": None, "plan": None}
    (terms,) = pm.hook.kdzoo_compute_losses(
        student=logits_only(s), teacher=logits_only(t), modules=torch.nn.ModuleDict(modules), **arguments
    )
    (weights,) = pm.hook.kdzoo_loss_weights(stage=None, epoch=epoch, progress=0.0, plan=None)
    assert weights["ctkd_temperature"] == pytest.approx(0.9 * lam, abs=1e-9)
    assert terms["ctkd_temperature"].item() == 0.0  # adds nothing to the loss value
    (weights["kd"] * terms["kd"] + weights["ctkd_temperature"] * terms["ctkd_temperature"]).backward()
    assert modules["temperature"].theta.grad is not None

    # the authors' way: one KD loss at T = 1 + 20 sigmoid(GRL(theta, lambda)), weighted 0.9 (float64:
    # at T ~ 15.6 the temperature's gradient is a small difference of large terms)
    def authors(student, teacher):
        theta = torch.ones(1, dtype=torch.float64, requires_grad=True)
        temp = 1.0 + 20.0 * torch.sigmoid(_GradientReversal.apply(theta, lam))
        log_p_s, p_t = F.log_softmax(student / temp, 1), F.softmax(teacher / temp, 1)
        (0.9 * F.kl_div(log_p_s, p_t, reduction="batchmean") * temp.square().squeeze()).backward()
        return theta.grad

    s_ref = s0.double().requires_grad_()
    theirs_theta = authors(s_ref, t.double())
    assert torch.allclose(s.grad.double(), s_ref.grad, rtol=1e-4, atol=1e-7)  # the student learns KD at T
    from kdzoo.losses.ctkd import kl_at
    from kdzoo_plugins.ctkd import GlobalTemperature

    temperature = GlobalTemperature(1.0, 20.0).double()
    adversary = kl_at(s0.double(), t.double(), temperature())
    (0.9 * lam * (adversary - adversary.detach())).backward()
    assert torch.allclose(temperature.theta.grad, theirs_theta, rtol=1e-9, atol=1e-15)
