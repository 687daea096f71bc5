"""Making two feature maps comparable position by position."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def average_pooled(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``x`` (N, C, H, W) average-pooled to ``size``: a plain strided pooling when the sides divide
    evenly (the same numbers as adaptive pooling, about twice as fast on a CPU), else adaptive."""
    (h, w), (out_h, out_w) = x.shape[-2:], size
    if (h, w) == (out_h, out_w):
        return x
    if h % out_h == 0 and w % out_w == 0:
        kernel = (h // out_h, w // out_w)
        return F.avg_pool2d(x, kernel, kernel)
    return F.adaptive_avg_pool2d(x, size)


def pooled_to_smaller(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``a`` and ``b`` (N, C, H, W) with the larger map average-pooled to the smaller one's size
    (each side separately; a map already at that size is returned as is)."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    return average_pooled(a, size), average_pooled(b, size)
