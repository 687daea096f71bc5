"""Be Your Own Teacher's terms (Zhang et al., ICCV 2019): shallow heads learn from the deepest one."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import soft_target_kl


def byot_losses(
    heads: list[tuple[Tensor, Tensor]], deepest_features: Tensor, deepest_logits: Tensor, targets: Tensor, t: float
) -> dict[str, Tensor]:
    """Summed over shallow heads: CE with labels, KL to the deepest head, feature hint (unweighted)."""
    soft_target = deepest_logits.detach()
    hint_target = deepest_features.detach()
    return {
        "byot_ce": sum(F.cross_entropy(logits, targets) for _, logits in heads),
        "byot_kd": sum(soft_target_kl(logits, soft_target, t) for _, logits in heads),
        "byot_hint": sum(F.mse_loss(features, hint_target) for features, _ in heads),
    }
