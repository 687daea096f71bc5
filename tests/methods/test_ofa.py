"""OFA-KD: the loss against a hand computation of the authors' equation and their code's form, the
branches' shapes on CNN and ViT students, and one training step on heterogeneous pairs."""

from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import kdzoo
from kdzoo import KdzooError, ModelInfo, StageInfo
from kdzoo.engine.extract import describe
from kdzoo.losses.ofa import ofa_loss
from kdzoo_plugins.ofa import OFA, OFAConfig, SepConv, TransformerBranch, default_stages

VIT = {"img_size": 32, "patch_size": 4}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _logits(seed, batch=4, classes=7):
    s = torch.randn(batch, classes, generator=_gen(seed)) * 2
    t = torch.randn(batch, classes, generator=_gen(seed + 100)) * 3
    y = torch.randint(0, classes, (batch,), generator=_gen(seed + 200))
    return s, t, y


def _by_hand(s, t, y, eps, temperature):
    """mean_b sum_c -((p_t + y)^eps - y) log p_s, element by element in float64."""
    s, t = s.double().numpy() / temperature, t.double().numpy() / temperature
    total = 0.0
    for b in range(s.shape[0]):
        p_s = np.exp(s[b] - s[b].max()) / np.exp(s[b] - s[b].max()).sum()
        p_t = np.exp(t[b] - t[b].max()) / np.exp(t[b] - t[b].max()).sum()
        for c in range(s.shape[1]):
            target = 1.0 if c == int(y[b]) else 0.0
            total += -((p_t[c] + target) ** eps - target) * np.log(p_s[c])
    return total / s.shape[0]


def _authors_form(s, t, y, eps, temperature):
    """The authors' ``ofa_loss`` as written in their distillers/ofa.py: log of the softmax, the
    one-hot mask added inside the power and subtracted outside, summed over classes, batch mean."""
    mask = F.one_hot(y, s.shape[1])
    p_s, p_t = F.softmax(s / temperature, dim=1), F.softmax(t / temperature, dim=1)
    return torch.sum(-((p_t + mask) ** eps - mask) * torch.log(p_s), dim=-1).mean()


@pytest.mark.parametrize(("eps", "temperature"), [(1.0, 1.0), (1.5, 1.0), (0.8, 1.0), (1.2, 4.0), (2.0, 2.0)])
def test_loss_equals_the_equation_by_hand_and_the_authors_form(eps, temperature):
    s, t, y = _logits(int(eps * 10 + temperature))
    ours = ofa_loss(s, t, y, eps, temperature).item()
    assert ours == pytest.approx(_by_hand(s, t, y, eps, temperature), rel=1e-5)
    assert ours == pytest.approx(_authors_form(s, t, y, eps, temperature).item(), rel=1e-5)


def test_eps_one_is_the_cross_entropy_with_the_teachers_distribution():
    s, t, y = _logits(3)
    soft_ce = F.cross_entropy(s / 2.0, F.softmax(t / 2.0, dim=1))
    assert ofa_loss(s, t, y, 1.0, 2.0).item() == pytest.approx(soft_ce.item(), rel=1e-5)
    # eps > 1 weights the target class more: the loss of a student sure of the label drops
    sure = torch.where(F.one_hot(y, 7).bool(), 10.0, 0.0)
    assert ofa_loss(sure, t, y, 1.5).item() < ofa_loss(sure, t, y, 1.0).item()


def test_loss_takes_soft_labels_by_their_argmax_and_never_trains_the_teacher():
    s, t, y = _logits(5)
    s.requires_grad_(True)
    t.requires_grad_(True)
    soft = 0.9 * F.one_hot(y, 7) + 0.1 / 7
    loss = ofa_loss(s, t, soft, 1.5)
    assert loss.item() == pytest.approx(ofa_loss(s, t, y, 1.5).item(), rel=1e-6)
    loss.backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="same shape"):
        ofa_loss(s, t[:, :5], y)


def _info(name, **kwargs):
    return describe(timm.create_model(name, num_classes=10, **kwargs), name, 32)


def test_default_stages_are_the_authors_four():
    assert default_stages(_info("test_resnet")) == [1, 2, 3, 4]  # timm's layer1..layer4
    assert default_stages(_info("test_vit", **VIT)) == [0, 1, 4, 5]  # 1/6, 1/3, 5/6, 6/6 of 6 blocks
    blocks = tuple(StageInfo(i, 192, 16, f"blocks.{i}") for i in range(12))
    deit_tiny = ModelInfo("deit_tiny", blocks, num_classes=1000, embedding_dim=192, img_size=224)
    assert default_stages(deit_tiny) == [1, 3, 9, 11]  # the authors' stage_info for DeiT-T


def _branches(teacher, student, **config):
    method = OFA(OFAConfig(**config))
    plan = method.kdzoo_plan(student=student)
    return method.kdzoo_feature_taps(plan=plan), method.kdzoo_build_modules(teacher, student, plan)["branches"]


@pytest.mark.parametrize("student_name", ["test_resnet", "resnet10t"])
def test_cnn_branches_map_every_stage_to_class_logits(student_name):
    torch.manual_seed(0)
    model = timm.create_model(student_name, num_classes=10)
    student, teacher = describe(model, student_name, 32), _info("test_vit", **VIT)
    taps, branches = _branches(teacher, student)
    assert taps.student == (1, 2, 3, 4)
    # one stride-2 SepConv per halving down to layer4's stride 32; a 1x1 conv on layer4 itself
    assert [sum(isinstance(m, SepConv) for m in branches[str(s)].modules()) for s in (1, 2, 3, 4)] == [3, 2, 1, 0]
    width = max(student.embedding_dim, teacher.embedding_dim)
    assert all(branches[str(s)][-1].in_features == width for s in (1, 2, 3, 4))
    _, maps = model.forward_intermediates(torch.randn(4, 3, 32, 32), indices=list(taps.student))
    for stage, feature in zip(taps.student, maps, strict=True):
        assert branches[str(stage)](feature).shape == (4, 10)


def test_vit_branches_map_token_maps_to_class_logits():
    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=10, **VIT)
    student, teacher = describe(model, "test_vit", 32), _info("test_resnet")
    taps, branches = _branches(teacher, student)
    assert all(isinstance(b, TransformerBranch) for b in branches.values())
    # max(1, chosen stages deeper than the branch) blocks: the authors' max(4 - stage, 1)
    assert [len(branches[str(s)].blocks) for s in taps.student] == [3, 2, 1, 1]
    _, maps = model.forward_intermediates(torch.randn(4, 3, 32, 32), indices=list(taps.student))
    for stage, feature in zip(taps.student, maps, strict=True):
        assert feature.shape == (4, 64, 8, 8)  # an 8 x 8 grid: already <= 7 * 2, no merge
        assert branches[str(stage)](feature).shape == (4, 10)


def test_vit_branch_merges_an_odd_grid_down_towards_seven():
    torch.manual_seed(0)
    branch = TransformerBranch(in_channels=24, width=32, merges=1, depth=1, num_classes=5)
    tokens = torch.randn(2, 24, 15, 15)  # odd: padded to 16 x 16, merged to 8 x 8
    assert branch.merges[0](tokens.permute(0, 2, 3, 1)).shape == (2, 8, 8, 32)
    assert branch(tokens).shape == (2, 5)


def test_terms_sum_the_branches_with_their_own_eps():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    student = describe(model, "test_resnet", 32)
    method = OFA(OFAConfig(eps=[1.0, 1.2, 1.4, 1.6, 1.8], temperature=2.0))
    plan = method.kdzoo_plan(student=student)
    taps = method.kdzoo_feature_taps(plan=plan)
    modules = method.kdzoo_build_modules(teacher=_info("resnet10t"), student=student, plan=plan)
    branches = modules["branches"].eval()
    logits, maps = model.forward_intermediates(torch.randn(4, 3, 32, 32), indices=list(taps.student))
    features = dict(zip(taps.student, maps, strict=True))
    s_logits = model.forward_head(logits)
    t_logits, y = torch.randn(4, 10, generator=_gen(1)), torch.randint(0, 10, (4,), generator=_gen(2))
    out = SimpleNamespace(logits=s_logits, feature=features.__getitem__)
    terms = method.kdzoo_compute_losses(out, SimpleNamespace(logits=t_logits), y, plan, modules, None)
    expected = sum(
        _authors_form(branches[str(s)](features[s]), t_logits, y, e, 2.0)
        for s, e in zip((1, 2, 3, 4), (1.0, 1.2, 1.4, 1.6), strict=True)
    )
    assert terms["ofa"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["ofa_logits"].item() == pytest.approx(_authors_form(s_logits, t_logits, y, 1.8, 2.0).item(), rel=1e-5)
    assert method.kdzoo_loss_weights() == {"ce": 1.0, "ofa": 1.0, "ofa_logits": 1.0}


def test_config_errors_name_the_key():
    two = OFAConfig(eps=[1.0, 1.5])
    two.validate("ofa")  # valid values; only the student's 4 stages make 2 the wrong count
    with pytest.raises(KdzooError, match="ofa.eps"):
        OFA(two).kdzoo_plan(student=_info("test_resnet"))
    with pytest.raises(KdzooError, match="ofa.eps"):
        OFAConfig(eps=[0.0]).validate("ofa")
    with pytest.raises(KdzooError, match="same classifier"):
        method, student = OFA(OFAConfig()), _info("test_resnet")
        method.kdzoo_build_modules(
            teacher=describe(timm.create_model("test_resnet", num_classes=5), "t", 32),
            student=student,
            plan=method.kdzoo_plan(student=student),
        )


@pytest.mark.parametrize(
    ("teacher", "t_kwargs", "student", "s_kwargs"),
    [("test_vit", VIT, "test_resnet", {}), ("test_resnet", {}, "test_vit", VIT)],
    ids=["vit->resnet", "resnet->vit"],
)
def test_one_step_trains_the_student_and_the_branches(teacher, t_kwargs, student, s_kwargs):
    torch.manual_seed(0)
    t_model = timm.create_model(teacher, num_classes=10, **t_kwargs)
    s_model = timm.create_model(student, num_classes=10, **s_kwargs)
    objective = kdzoo.get_method("ofa", teacher=t_model, student=s_model, img_size=32)
    optimizer = torch.optim.SGD([*s_model.parameters(), *objective.parameters()], lr=0.1)
    x, y = torch.randn(4, 3, 32, 32, generator=_gen(0)), torch.randint(0, 10, (4,), generator=_gen(1))
    before = [p.detach().clone() for p in objective.parameters()]

    result = objective.loss(kdzoo.Batch(x, y))
    loss = result.loss
    loss.backward()
    assert torch.isfinite(loss) and set(result.terms) == {"ce", "ofa", "ofa_logits"}
    assert all(torch.isfinite(v) and v > 0 for v in result.terms.values())
    assert sum(p.grad.abs().sum() for p in s_model.parameters() if p.grad is not None) > 0
    branches = objective.method_modules["ofa"]["branches"]
    assert len(branches) == 4
    for name, branch in branches.items():
        head = list(branch.modules())[-1]
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0, f"branch {name} got no gradient"
    assert all(p.grad is None for p in t_model.parameters())
    optimizer.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, objective.parameters(), strict=True))
