"""DIST, DIST+, logit standardization and Tf-KD: equal to torchdistill 1.1.5 where it has the method
(or in the exact relation where kdzoo follows the paper instead), else to the authors' formulas."""

import pytest
import torch
import torch.nn.functional as F
from torchdistill.losses.mid_level import DISTLoss, DISTPlusLoss, LogitStdKDLoss

from kdzoo.losses.dist import (
    channel_relation_loss,
    dist_inter_loss,
    dist_intra_loss,
    dist_losses,
    spatial_relation_loss,
)
from kdzoo.losses.kd import standardize
from kdzoo.losses.tfkd import virtual_teacher_loss
from kdzoo.registry import run_manager
from kdzoo_plugins.kd import HintonKD, KDConfig
from kdzoo_plugins.tfkd import TfKDConfig
from tests.helpers import logit_terms, logits_only


def _io(x):
    return {".": {"output": x}}


def _logits(seed, batch=16, classes=100):
    gen = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(batch, classes, generator=gen), 3 * torch.randn(batch, classes, generator=gen)


@pytest.mark.parametrize("tau, beta, gamma", [(4.0, 2.0, 2.0), (1.0, 1.0, 1.0), (2.0, 0.5, 3.0)])
def test_dist_equals_torchdistill(tau, beta, gamma):
    s, t = _logits(0)
    ours = beta * dist_inter_loss(s, t, tau) + gamma * dist_intra_loss(s, t, tau)
    inter, intra = dist_losses(s, t, tau)
    assert (beta * inter + gamma * intra).item() == pytest.approx(ours.item(), rel=1e-6)
    theirs = DISTLoss(".", "output", ".", "output", beta=beta, gamma=gamma, tau=tau)(_io(s), _io(t))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_dist_plus_relations_and_their_exact_relation_to_torchdistill():
    """torchdistill adds the channel *correlation*; kdzoo's term is 1 - correlation, like DIST's."""
    s, t = _logits(1, classes=10)
    gen = torch.Generator().manual_seed(2)
    f_s, f_t = torch.randn(16, 8, 4, 4, generator=gen), torch.randn(16, 8, 4, 4, generator=gen)
    loss = DISTPlusLoss(
        "l", "output", "l", "output", "f", "output", "f", "output", beta=2, gamma=2, iota=1, kappa=1, tau=4
    )
    theirs = loss({"l": {"output": s}, "f": {"output": f_s}}, {"l": {"output": t}, "f": {"output": f_t}})
    dist = 2 * dist_inter_loss(s, t, 4.0) + 2 * dist_intra_loss(s, t, 4.0)
    channel, spatial = channel_relation_loss(f_s, f_t), spatial_relation_loss(f_s, f_t)
    assert theirs.item() == pytest.approx((dist + (1 - channel) + spatial).item(), rel=1e-5)
    # and the terms are what their names say, computed by hand
    cs, ct = f_s - f_s.mean(1, keepdim=True), f_t - f_t.mean(1, keepdim=True)
    corr = (cs * ct).sum(1) / ((cs**2).sum(1) * (ct**2).sum(1)).sqrt()
    assert channel.item() == pytest.approx(1 - corr.mean().item(), rel=1e-5)
    assert channel_relation_loss(f_s, f_s).item() == pytest.approx(0.0, abs=1e-6)


def test_logit_standardized_kd_equals_torchdistill_up_to_t_squared():
    """The paper's code multiplies the KL by T^2; torchdistill's LogitStdKDLoss does not."""
    s, t = _logits(3)
    temperature = 2.0
    kd = HintonKD(KDConfig(temperature=temperature, logit_standardization=True))
    terms = logit_terms(run_manager({"kd": kd}), logits_only(s), t)
    theirs = LogitStdKDLoss(".", "output", ".", "output", temperature=temperature, alpha=0.5)(_io(s), _io(t))
    assert terms["kd"].item() == pytest.approx(temperature**2 * theirs.item(), rel=1e-5)
    z = standardize(s)
    assert torch.allclose(z.mean(1), torch.zeros(16), atol=1e-5) and torch.allclose(z.std(1), torch.ones(16), atol=1e-5)
    with pytest.raises(TypeError):  # its documented default alpha=None: 1 - None
        LogitStdKDLoss(".", "output", ".", "output", temperature=temperature)


def _authors_kl(log_q, p):
    """The authors' nn.KLDivLoss(): its default reduction 'mean' averages over every element, B x C."""
    return F.kl_div(log_q, p, reduction="sum") / p.numel()


def test_tfkd_virtual_teacher_equals_the_authors_objective_on_cifar100():
    s, _ = _logits(4, classes=100)
    y = torch.arange(16) % 100
    c = TfKDConfig()
    u = torch.full((16, 100), 0.01 / 99)
    u[torch.arange(16), y] = 0.99
    authors = 0.9 * F.cross_entropy(s, y) + 0.1 * _authors_kl(F.log_softmax(s, 1), F.softmax(u / 20, 1)) * 100.0
    ours = c.virtual_ce_weight * F.cross_entropy(s, y) + c.virtual_weight * virtual_teacher_loss(s, y, 20.0, 0.99)
    assert ours.item() == pytest.approx(authors.item(), rel=1e-5)


def test_tfkd_virtual_teacher_is_the_papers_equation_on_ten_classes():
    """0.9 CE + 0.1 KL(softmax(u / 20) || softmax(s)), the KL summed over the classes, as the paper writes
    it: the same weights for any class count (the authors' multiplier 100 is CIFAR-100's C)."""
    s, _ = _logits(6, classes=10)
    y = torch.arange(16) % 10
    u = torch.full((16, 10), 0.01 / 9)
    u[torch.arange(16), y] = 0.99
    p = F.softmax(u.double() / 20, 1)
    kl = (p * (p.log() - F.log_softmax(s.double(), 1))).sum(1).mean()
    c = TfKDConfig()
    ours = c.virtual_ce_weight * F.cross_entropy(s, y) + c.virtual_weight * virtual_teacher_loss(s, y, 20.0, 0.99)
    assert ours.item() == pytest.approx((0.9 * F.cross_entropy(s.double(), y) + 0.1 * kl).item(), rel=1e-5)


def test_tfkd_self_equals_the_authors_objective_on_cifar100():
    from kdzoo import soft_target_kl

    s, t = _logits(5, classes=100)
    y = torch.arange(16) % 100
    c = TfKDConfig(variant="self")
    temp = c.temperature
    kl = _authors_kl(F.log_softmax(s / temp, 1), F.softmax(t / temp, 1)) * temp * temp * 50.0
    authors = 0.05 * F.cross_entropy(s, y) + 0.95 * kl
    ours = c.ce_weight * F.cross_entropy(s, y) + c.weight * soft_target_kl(s, t, temp)
    assert ours.item() == pytest.approx(authors.item(), rel=1e-5)


def test_tfkd_self_needs_the_students_own_architecture(tmp_path):
    from kdzoo import KdzooError
    from kdzoo.engine import build_trainer
    from kdzoo.registry import registry
    from tests.helpers import tiny_config

    with pytest.raises(KdzooError, match="set teacher.model=test_resnet"):
        build_trainer(tiny_config(["tfkd"], "tfkd.variant=self", out_dir=str(tmp_path)), registry(), tmp_path / "a")
    same = tiny_config(["tfkd"], "tfkd.variant=self", "teacher.model=test_resnet", out_dir=str(tmp_path))
    summary = build_trainer(same, registry(), tmp_path / "b", show_progress=False).fit()
    assert summary["teacher"] == "test_resnet" and summary["epochs"] == 1 and summary["teacher_source"] == "model"


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
    from kdzoo.registry import run_manager
    from kdzoo_plugins.ctkd import CTKDConfig, CurriculumTemperatureKD

    method = CurriculumTemperatureKD(CTKDConfig())
    pm = run_manager({"ctkd": method})
    (modules,) = pm.hook.kdzoo_build_modules(teacher=None, student=None, train_set=None, plan=None)
    s0, t = _logits(6, classes=10)
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
