"""ICKD, SRD, SKD and PAD-L2: equal to torchdistill 1.1.5's losses on the same seeded tensors, or in the
exact relation where kdzoo follows the authors' CIFAR code instead, and to the formulas by hand."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchdistill.losses.mid_level as td

from kdzoo.losses.ickd import ickd_loss
from kdzoo.losses.pad import pad_l2_loss
from kdzoo.losses.skd import skd_direction_loss, skd_instance_loss
from kdzoo.losses.srd import srd_loss
from kdzoo_plugins.ickd import ICKDConfig, InterChannelCorrelation


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _logits(seed, batch=16, classes=100):
    gen = _gen(seed)
    return 2 * torch.randn(batch, classes, generator=gen), 3 * torch.randn(batch, classes, generator=gen)


def _io(x, path="."):
    return {path: {"output": x}}


# ----------------------------------------------------------------------------- ICKD
@pytest.mark.parametrize("sizes", [(4, 4), (4, 2)])
def test_ickd_is_torchdistills_chsim_times_the_batch(sizes):
    """kdzoo divides by C B (the authors' CIFAR-100 code), ChSimLoss by C B^2 (their ImageNet code)."""
    s = torch.randn(8, 16, sizes[0], sizes[0], generator=_gen(0))
    t = torch.randn(8, 16, sizes[1], sizes[1], generator=_gen(1))
    pairs = {"p": {"student": {"io": "output", "path": "s"}, "teacher": {"io": "output", "path": "t"}, "weight": 1}}
    theirs = td.ChSimLoss(pairs)(_io(s, "s"), _io(t, "t"))
    assert ickd_loss(s, t).item() == pytest.approx(8 * theirs.item(), rel=1e-5)


def test_ickd_by_hand_and_the_embedding_is_the_authors():
    s = [[[1.0, 2.0], [0.0, 1.0]], [[1.0, 0.0], [2.0, 1.0]]]  # one sample, C = 2, 2x2
    t = [[[0.5, 1.0], [1.0, 3.0]], [[2.0, 0.0], [1.0, 1.0]]]

    def rows(fmap):
        flat = [[v for row in ch for v in row] for ch in fmap]
        gram = [[sum(a * b for a, b in zip(u, v, strict=True)) for v in flat] for u in flat]
        return [[g / math.sqrt(sum(x * x for x in r)) for g in r] for r in gram]

    gs, gt = rows(s), rows(t)
    expected = sum((a - b) ** 2 for rs, rt in zip(gs, gt, strict=True) for a, b in zip(rs, rt, strict=True)) / 2
    assert ickd_loss(torch.tensor([s]), torch.tensor([t])).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="embed the student's map first"):
        ickd_loss(torch.rand(2, 3, 2, 2), torch.rand(2, 4, 2, 2))

    from types import SimpleNamespace

    method = InterChannelCorrelation(ICKDConfig())
    teacher = SimpleNamespace(stage=lambda i: SimpleNamespace(index=0, channels=32, reduction=8))
    student = SimpleNamespace(stage=lambda i: SimpleNamespace(index=0, channels=8, reduction=8))
    embed = method.kdzoo_build_modules(plan=method.kdzoo_plan(teacher, student))["embed"]
    convs = [m for m in embed.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.in_channels, c.out_channels, c.bias) for c in convs] == [((1, 1), 8, 32, None)]
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in embed.modules())
    assert embed(torch.rand(2, 8, 3, 3), (3, 3)).shape == (2, 32, 3, 3)


# ----------------------------------------------------------------------------- SRD
@pytest.mark.parametrize("exponent, temperature", [(4.0, 1.0), (2.0, 4.0)])
def test_srd_equals_torchdistill(exponent, temperature):
    from kdzoo import soft_target_kl

    zs, zt = torch.randn(16, 32, generator=_gen(2)), torch.randn(16, 32, generator=_gen(3))
    s, t = _logits(4)
    keys = {"student_feature_module_path": "fs", "student_feature_module_io": "output"}
    keys |= {"teacher_feature_module_path": "ft", "teacher_feature_module_io": "output"}
    keys |= {"student_linear_module_path": ".", "student_linear_module_io": "output"}
    keys |= {"teacher_linear_module_path": ".", "teacher_linear_module_io": "output"}
    loss = td.SRDLoss(**keys, exponent=exponent, temperature=temperature)
    theirs = loss({"fs": {"output": zs}, ".": {"output": s}}, {"ft": {"output": zt}, ".": {"output": t}})
    kl = soft_target_kl(s, t, temperature) / temperature**2  # SRD's KL has no T^2
    ours = 2 * srd_loss(zs, zt, exponent) + kl
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    by_hand = math.log(
        sum(abs(a - b) ** exponent for a, b in zip(zs.flatten().tolist(), zt.flatten().tolist(), strict=True))
    )
    assert srd_loss(zs, zt, exponent).item() == pytest.approx(by_hand, rel=1e-5)


def test_srd_plugin_projects_and_normalises_without_affine_parameters():
    from types import SimpleNamespace

    from kdzoo_plugins.srd import ProjectorDistillation, SRDConfig

    method = ProjectorDistillation(SRDConfig())
    modules = method.kdzoo_build_modules(SimpleNamespace(embedding_dim=24), SimpleNamespace(embedding_dim=8))
    assert modules["projector"].weight.shape == (24, 8)
    for norm in (modules["student_norm"], modules["teacher_norm"]):
        assert not norm.affine and norm.eps == 1e-4
    assert method.kdzoo_loss_weights() == {"ce": 1.0, "srd": 2.0, "kd": 1.0}


# ----------------------------------------------------------------------------- SKD
def _skd_keys():
    keys = {"student_module_path": ".", "student_module_io": "output"}
    return keys | {"teacher_module_path": ".", "teacher_module_io": "output"}


@pytest.mark.parametrize("temperature", [4.0, 2.0])
def test_skd_paper_forms_equal_torchdistill(temperature):
    s, t = _logits(5)
    inst = td.SKDInstanceLoss(**_skd_keys(), temperature=temperature, mode="paper")(_io(s), _io(t))
    assert skd_instance_loss(s, t, temperature, "paper").item() == pytest.approx(inst.item(), rel=1e-5)
    dirn = td.SKDDirectionLoss(**_skd_keys(), tikhonov=0.1, mode="paper")(_io(s), _io(t))
    assert skd_direction_loss(s, t, 0.1, "paper").item() == pytest.approx(dirn.item(), rel=1e-5)


@pytest.mark.parametrize("tikhonov", [0.1, 0.5])
def test_skd_code_direction_equals_torchdistill(tikhonov):
    s, t = _logits(6, batch=32)
    theirs = td.SKDDirectionLoss(**_skd_keys(), tikhonov=tikhonov, mode="code")(_io(s), _io(t))
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
    s, t = _logits(7, batch=batch)
    instance, direction = _authors_skd(s, t, 4.0, 0.1)
    assert skd_instance_loss(s, t, 4.0, "code").item() == pytest.approx(instance.item(), rel=1e-5)
    assert skd_direction_loss(s, t, 0.1, "code").item() == pytest.approx(direction.item(), rel=1e-5)
    # the authors' mask scales the batch's KL by the fraction of samples at or below the median;
    # torchdistill's code mode masks each sample's KL instead: another number
    paper = td.SKDInstanceLoss(**_skd_keys(), temperature=4.0, mode="paper")(_io(s), _io(t))
    confidence = F.softmax(t, dim=1).max(dim=1).values
    fraction = confidence.le(torch.quantile(confidence, 0.5)).float().mean()
    assert instance.item() == pytest.approx((paper * 4.0**2 * fraction).item(), rel=1e-5)
    per_sample = td.SKDInstanceLoss(**_skd_keys(), temperature=4.0, mode="code")(_io(s), _io(t))
    assert abs(per_sample.item() - instance.item()) > 1e-3 * instance.item()


def test_skd_terms_give_the_teacher_no_gradient():
    s, t = _logits(8)
    s.requires_grad_(True)
    t.requires_grad_(True)
    (skd_instance_loss(s, t) + skd_direction_loss(s, t)).backward()
    assert t.grad is None and torch.isfinite(s.grad).all()


# ----------------------------------------------------------------------------- PAD
def test_pad_l2_equals_torchdistill():
    zs, zt = torch.randn(16, 32, generator=_gen(9)), torch.randn(16, 32, generator=_gen(10))
    log_var = 0.3 * torch.randn(16, 32, generator=_gen(11))
    loss = td.PADL2Loss("s", "t", module_path="v", eps=1e-6, reduction="mean")
    theirs = loss({"s": {"output": zs}, "v": {"output": log_var}}, {"t": {"output": zt}})
    assert pad_l2_loss(zs, zt, log_var, 1e-6).item() == pytest.approx(theirs.item(), rel=1e-5)
    by_hand = (
        sum(
            (b - a) ** 2 / (1e-6 + math.exp(v)) + v
            for a, b, v in zip(zs.flatten().tolist(), zt.flatten().tolist(), log_var.flatten().tolist(), strict=True)
        )
        / zs.numel()
    )
    assert pad_l2_loss(zs, zt, log_var).item() == pytest.approx(by_hand, rel=1e-5)


def test_pad_warms_up_on_plain_l2_with_a_frozen_variance_branch_then_weighs_by_it():
    from types import SimpleNamespace

    from kdzoo_plugins.pad import PADConfig, PrimeAwareDistillation

    method = PrimeAwareDistillation(PADConfig(l2_epochs=2))
    modules = method.kdzoo_build_modules(SimpleNamespace(embedding_dim=12), SimpleNamespace(embedding_dim=6))
    warm_up, pad = method.kdzoo_schedule(epochs=5, modules=modules)
    assert (warm_up.name, warm_up.epochs, pad.name, pad.epochs) == ("l2", 2, "pad", 5)
    student = torch.nn.Linear(3, 3)
    trained = {id(p) for p in warm_up.trainable(student, torch.nn.ModuleDict(modules))}
    assert {id(p) for p in modules["regressor"].parameters()} <= trained
    assert not trained & {id(p) for p in modules["variance"].parameters()}
    s = SimpleNamespace(embedding=torch.randn(4, 6, generator=_gen(12)))
    t = SimpleNamespace(embedding=torch.randn(4, 12, generator=_gen(13)))
    mapped = modules["regressor"](s.embedding)
    assert method.kdzoo_compute_losses(s, t, warm_up, modules)["l2"].item() == pytest.approx(
        F.mse_loss(mapped, t.embedding).item()
    )
    log_var = modules["variance"](s.embedding)
    got = method.kdzoo_compute_losses(s, t, pad, modules)["pad"]
    assert got.item() == pytest.approx(pad_l2_loss(mapped, t.embedding, log_var).item(), rel=1e-6)
    assert PrimeAwareDistillation(PADConfig(l2_epochs=0)).kdzoo_schedule(epochs=5, modules=modules)[0].name == "pad"


def test_the_four_register_with_their_kind():
    from kdzoo.registry import registry

    kinds = {name: registry().methods[name].kind for name in ("ickd", "srd", "skd", "pad")}
    assert kinds == {"ickd": "feature", "srd": "feature", "skd": "logit", "pad": "feature"}


@pytest.mark.parametrize("positions, agreement", [(1, None), (4, None), (9, None), (4, 1e-3)])
def test_ickd_through_small_products_equals_the_channel_grams_in_value_and_gradient(positions, agreement):
    """Few positions, many channels take the N x N route; value and gradient must equal the C x C
    Grams' (in float64), also when the maps nearly agree, and a channel a ReLU switched off (a zero
    Gram row) must not make the gradient NaN."""
    from kdzoo.losses.ickd import channel_correlation

    side = int(positions**0.5)
    s = torch.randn(4, 24, side, side, generator=_gen(20)).relu().requires_grad_(True)
    t = torch.randn(4, 24, side, side, generator=_gen(21)).relu()
    if agreement is not None:
        t = (s.detach() + agreement * torch.randn(s.shape, generator=_gen(22))).relu()
    with torch.no_grad():
        s[0, 3] = 0.0
    s64 = s.detach().double().requires_grad_(True)
    direct = (channel_correlation(s64) - channel_correlation(t.double())).square().sum() / (24 * 4)
    (g_direct,) = torch.autograd.grad(direct, s64)
    ours = ickd_loss(s, t)
    (g_ours,) = torch.autograd.grad(ours, s)
    assert ours.dtype == torch.float32 and ours.item() == pytest.approx(direct.item(), rel=1e-5)
    assert torch.isfinite(g_ours).all()
    assert torch.allclose(g_ours.double(), g_direct, rtol=1e-4, atol=1e-5 * g_direct.abs().max().item())
