"""Tests for kdzoo-logit-matching. Run them with the package installed
(``pip install -e examples/kdzoo-logit-matching``): the conformance suite finds the method through
the ``kdzoo`` entry point, like ``kdzoo run`` does."""

from __future__ import annotations

import kdzoo
import pytest
import torch
from kdzoo.registry import registry, run_manager
from kdzoo.testing import conformance_cases, run_case

from kdzoo_logit_matching import LogitMatching, LogitMatchingConfig, LogitMatchingLoss, logit_l2

STUDENT = [[1.0, 2.0, 0.5], [0.0, 3.0, -2.0]]
TEACHER = [[3.0, 1.0, 0.0], [1.0, 2.0, -1.0]]


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("kdzoo-cache")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Never download (the tiny teachers the conformance cases train go to ``teacher_cache``)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _require_installed():
    if "logit_matching" not in registry().methods:
        pytest.fail(f"kdzoo does not see 'logit_matching' ({registry().failures}); pip install it first")


# ---------------------------------------------------------------------------------- the formula by hand
def test_term_matches_the_papers_objective_by_hand():
    # sample 1: (1-3)^2 + (2-1)^2 + (0.5-0)^2 = 5.25; sample 2: 1 + 1 + 1 = 3; 1/(2*2) * 8.25
    value = logit_l2(torch.tensor(STUDENT), torch.tensor(TEACHER))
    assert value.ndim == 0 and value.item() == pytest.approx(8.25 / 4)


def test_gradient_reaches_the_student_only():
    student, teacher = torch.tensor(STUDENT, requires_grad=True), torch.tensor(TEACHER, requires_grad=True)
    logit_l2(student, teacher).backward()
    assert torch.allclose(student.grad, (student - teacher).detach() / 2)  # d/dz 1/(2B) ||z - t||^2
    assert teacher.grad is None


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="logits of one shape"):
        logit_l2(torch.zeros(2, 3), torch.zeros(2, 4))


# ---------------------------------------------------------------------------------- weights
@pytest.mark.parametrize("epoch, factor", [(0, 1 / 4), (1, 2 / 4), (10, 1.0)])
def test_warmup_weights_through_the_hook(epoch, factor):
    pm = run_manager({"logit_matching": LogitMatching(LogitMatchingConfig(weight=2.0, warmup_epochs=4))})
    (weights,) = pm.hook.kdzoo_loss_weights(stage=kdzoo.Stage("train", 20), epoch=epoch, progress=epoch / 20)
    assert weights == pytest.approx({"ce": 0.0, "logit_l2": 2.0 * factor})


def test_loss_module_for_your_own_loop():
    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor([0, 1])
    ce = torch.nn.functional.cross_entropy(s, y).item()
    assert LogitMatchingLoss()(s, t, y).item() == pytest.approx(8.25 / 4)
    assert LogitMatchingLoss(ce_weight=0.5)(s, t, y).item() == pytest.approx(8.25 / 4 + 0.5 * ce)


# ---------------------------------------------------------------------------------- through kdzoo
def test_registered_with_a_typed_config():
    _require_installed()
    info = kdzoo.list_methods()["logit_matching"]
    assert info.distribution == "kdzoo-logit-matching" and info.plugin == "logit_matching"
    assert kdzoo.method_config("logit_matching", weight=3).weight == 3.0
    with pytest.raises(kdzoo.KdzooError, match="logit_matching.warmup_epochs"):
        kdzoo.method_config("logit_matching", warmup_epochs=-1)


@pytest.mark.parametrize("case", conformance_cases("logit_matching"), ids=str)
def test_conformance(case, tmp_path, teacher_cache):
    _require_installed()
    run_case(case, tmp_path, cache=teacher_cache)
