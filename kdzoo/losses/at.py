"""Attention transfer's term (Zagoruyko & Komodakis, ICLR 2017): normalised spatial attention maps.

``Q = mean_c(f^p)`` per sample, flattened and L2-normalised: ``a = Q / ||Q||_2``. Per stage pair,
``mean((a_s - a_t)^2)`` (``form='code'``, the authors' code and RepDistiller) or
``0.5 * mean_b ||a_s - a_t||_2`` (``form='paper'``); the larger map is average-pooled to the
smaller one when their sizes differ.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdzoo.toolkit.shapes import average_pooled


def spatial_attention(feature: Tensor, p: float = 2.0) -> Tensor:
    """``mean_c(f^p)`` per sample, L2-normalised, kept as a (B, 1, H, W) map.

    Normalising before the pooling that unequal map sizes need changes nothing (average pooling is
    linear, and the map is normalised again after it), and it keeps the values in [0, 1], safe for
    a float16 teacher-output cache. This is all AT needs of a teacher map: C times smaller.
    """
    q = feature.pow(p).mean(dim=1, keepdim=True) if p != 2 else feature.square().mean(dim=1, keepdim=True)
    return F.normalize(q.flatten(1), dim=1).view_as(q)


def _flat(q: Tensor, size: tuple[int, int]) -> Tensor:
    return F.normalize(average_pooled(q, tuple(size)).flatten(1), dim=1)


def attention_map(feature: Tensor, p: float = 2.0, size: tuple[int, int] | None = None) -> Tensor:
    """``normalize(flatten(mean_c(f^p)))`` per sample; pooled to ``size`` first if given."""
    return _flat(spatial_attention(feature, p), size or tuple(feature.shape[-2:]))


def attention_loss(student_attention: Tensor, teacher_attention: Tensor, form: str = "code") -> Tensor:
    """AT loss of one stage pair from two :func:`spatial_attention` maps (unweighted)."""
    size = (
        min(student_attention.shape[-2], teacher_attention.shape[-2]),
        min(student_attention.shape[-1], teacher_attention.shape[-1]),
    )
    a_s, a_t = _flat(student_attention, size), _flat(teacher_attention.detach(), size)
    if form == "paper":
        return 0.5 * (a_s - a_t).norm(p=2, dim=1).mean()
    return (a_s - a_t).pow(2).mean()


def at_loss(student_feature: Tensor, teacher_feature: Tensor, p: float = 2.0, form: str = "code") -> Tensor:
    """Attention-transfer loss of one stage pair from the two feature maps (unweighted)."""
    return attention_loss(spatial_attention(student_feature, p), spatial_attention(teacher_feature.detach(), p), form)
