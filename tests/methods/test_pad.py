"""PAD: the L2 term equals torchdistill 1.1.5's PADL2Loss and the formula by hand; the warm-up stage on
plain L2 with a frozen variance branch."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchdistill.losses.mid_level as td

from kdzoo.losses.pad import pad_l2_loss
from tests.helpers import seeded


def test_pad_l2_equals_torchdistill():
    zs, zt = torch.randn(16, 32, generator=seeded(9)), torch.randn(16, 32, generator=seeded(10))
    log_var = 0.3 * torch.randn(16, 32, generator=seeded(11))
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
    s = SimpleNamespace(embedding=torch.randn(4, 6, generator=seeded(12)))
    t = SimpleNamespace(embedding=torch.randn(4, 12, generator=seeded(13)))
    mapped = modules["regressor"](s.embedding)
    assert method.kdzoo_compute_losses(s, t, warm_up, modules)["l2"].item() == pytest.approx(
        F.mse_loss(mapped, t.embedding).item()
    )
    log_var = modules["variance"](s.embedding)
    got = method.kdzoo_compute_losses(s, t, pad, modules)["pad"]
    assert got.item() == pytest.approx(pad_l2_loss(mapped, t.embedding, log_var).item(), rel=1e-6)
    assert PrimeAwareDistillation(PADConfig(l2_epochs=0)).kdzoo_schedule(epochs=5, modules=modules)[0].name == "pad"
