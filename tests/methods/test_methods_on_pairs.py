"""Methods through the real engine on several timm pairs, and stacked: the weighted sum of their terms."""

import pytest
import torch

from kdzoo.api import Batch, When
from kdzoo.engine import build_trainer
from kdzoo.registry import registry
from tests.helpers import fit_tiny, tiny_config

TERMS = {
    "kd": {"ce", "kd"},
    "fitnets": {"ce", "hint"},
    "at": {"ce", "at"},
    "rkd": {"ce", "rkd_distance", "rkd_angle"},
}


@pytest.mark.parametrize(
    "method, pair",
    [
        ("at", "resnet->resnet"),
        ("at", "resnet->mobilenetv3"),
        ("at", "vit->resnet"),
        ("at", "convnext->resnet"),
        ("at", "resnet->vit"),
        ("rkd", "resnet->resnet"),
        ("rkd", "resnet->mobilenetv3"),
        ("rkd", "vit->resnet"),
        ("rkd", "convnext->resnet"),
        ("rkd", "resnet->vit"),
        ("kd", "convnext->resnet"),
        ("kd", "resnet->vit"),
        ("fitnets", "convnext->resnet"),
        ("fitnets", "resnet->vit"),
        ("fitnets", "resnet->efficientnet"),
    ],
)
def test_method_on_pair(method, pair, tmp_path):
    _, record = fit_tiny(tiny_config([method], pair=pair, out_dir=str(tmp_path)), tmp_path)
    assert TERMS[method] <= set(record["train"])


def test_stacked_kd_at_rkd_total_is_the_weighted_sum(tmp_path):
    cfg = tiny_config(["kd", "at", "rkd"], out_dir=str(tmp_path))
    trainer = build_trainer(cfg, registry(), tmp_path / "run", show_progress=False)
    x, y = next(trainer.data.train.epoch(0))
    result = trainer.step.losses(Batch(x, y), When(trainer.stages[0]))
    total, terms, weights = result.loss, result.terms, result.weights
    assert set(terms) == {"ce", "kd", "at", "rkd_distance", "rkd_angle"}
    assert weights == {"ce": 0.1, "kd": 0.9, "at": 1000.0, "rkd_distance": 25.0, "rkd_angle": 50.0}
    assert torch.allclose(total, sum(weights[k] * v for k, v in terms.items()))
    trainer.fit()
    logged = trainer.history[-1]["train"]
    assert set(terms) <= set(logged)  # each term logged on its own
