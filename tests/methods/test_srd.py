"""SRD: its two weighted terms equal torchdistill 1.1.5's SRDLoss and the formula by hand; the plugin's
projector and normalisation."""

import math

import pytest
import torch
import torchdistill.losses.mid_level as td

from kdzoo.losses.srd import srd_loss
from tests.helpers import logit_pair, seeded


@pytest.mark.parametrize("exponent, temperature", [(4.0, 1.0), (2.0, 4.0)])
def test_srd_equals_torchdistill(exponent, temperature):
    from kdzoo import soft_target_kl

    zs, zt = torch.randn(16, 32, generator=seeded(2)), torch.randn(16, 32, generator=seeded(3))
    s, t = logit_pair(4)
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
