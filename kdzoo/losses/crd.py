"""CRD's noise-contrastive estimation (Tian, Krishnan, Isola, ICLR 2020), on tensors.

An anchor embedding is scored against K + 1 keys (its positive first, then K negatives) as
``exp(key . anchor / T) / Z``; the NCE loss treats the scores as the probability that a key came
from the data rather than from the uniform noise distribution over the N training samples
(RepDistiller's ``ContrastLoss``, torchdistill's ``CRDLoss.compute_contrast_loss``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def contrast_scores(anchor: Tensor, keys: Tensor, temperature: float) -> Tensor:
    """``exp(keys . anchor / T)``: anchor (B, D), keys (B, K + 1, D) -> unnormalised scores (B, K + 1)."""
    return torch.exp(torch.bmm(keys, anchor.unsqueeze(-1)).squeeze(-1) / temperature)


def nce_loss(scores: Tensor, num_samples: int, eps: float = 1e-7) -> Tensor:
    """NCE with K noise samples per positive (``scores`` (B, K + 1), normalised by Z, positive first):
    ``-(1/B) sum_b [log(P_b0 / (P_b0 + K/N + eps)) + sum_k log((K/N) / (P_bk + K/N + eps))]``."""
    batch, negatives = scores.shape[0], scores.shape[1] - 1
    noise = negatives / float(num_samples)  # K times the noise distribution's probability 1/N
    positive = scores[:, 0]
    log_data = torch.log(positive / (positive + noise + eps))
    log_noise = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(log_data.sum() + log_noise.sum()) / batch


def other_class_draws(
    uniform: Tensor, positive_classes: Tensor, by_class: Tensor, class_start: Tensor, class_count: Tensor
) -> Tensor:
    """Samples of *other* classes than each row's positive, uniformly (RepDistiller's ``exact`` mode).

    ``uniform`` (B, K) in [0, 1); ``by_class``: the dataset's indices sorted by class, class ``c``
    occupying ``class_start[c]`` to ``class_start[c] + class_count[c]``. A draw over the N - n_c
    positions outside that run skips it: no per-class index lists (C x N of them) are kept."""
    count = class_count[positive_classes].unsqueeze(1)
    start = class_start[positive_classes].unsqueeze(1)
    position = (uniform * (by_class.numel() - count)).long()
    position = position + count * (position >= start)
    return by_class[position]
