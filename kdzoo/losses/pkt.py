"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018) on embeddings.

Each batch of embeddings becomes a probability distribution over pairs: cosine similarities
mapped to [0, 1] and normalised per row; the loss is the KL divergence of the teacher's from the
student's, averaged over the B x B entries, as the authors' code (and RepDistiller, torchdistill).
"""

from __future__ import annotations

from torch import Tensor


def _pair_probabilities(x: Tensor, eps: float) -> Tensor:
    x = x / (x.square().sum(dim=1, keepdim=True).sqrt() + eps)
    x = x.nan_to_num(0.0)
    similarity = (x @ x.t() + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)


def pkt_loss(student_embedding: Tensor, teacher_embedding: Tensor, eps: float = 1e-7) -> Tensor:
    """``mean(p_t * log((p_t + eps) / (p_s + eps)))`` over the B x B pair distributions; widths may differ."""
    p_s = _pair_probabilities(student_embedding, eps)
    p_t = _pair_probabilities(teacher_embedding.detach(), eps)
    return (p_t * ((p_t + eps) / (p_s + eps)).log()).mean()
