"""Making two feature maps comparable position by position."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pooled_to_smaller(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``a`` and ``b`` (N, C, H, W) with the larger map average-pooled to the smaller one's size
    (each side separately; a map already at that size is returned as is)."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    a = a if tuple(a.shape[-2:]) == size else F.adaptive_avg_pool2d(a, size)
    b = b if tuple(b.shape[-2:]) == size else F.adaptive_avg_pool2d(b, size)
    return a, b
