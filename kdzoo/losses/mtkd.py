"""Multi-teacher KD with per-sample teacher weights, as the CA-MKD authors' code computes it.

Zhang, Chen, Wang. "Confidence-Aware Multi-Teacher Knowledge Distillation". ICASSP 2022
(arXiv:2201.00007; Rorozhl/CA-MKD ``helper/loops.py``, ``train_distill_multi_teacher``), with the two
weightings that code compares it against:

* ``confidence`` (CA-MKD): a teacher that predicts the sample's label better weighs more,
  ``w_k = (1 - softmax_k(CE(z_k, y))) / (K - 1)``;
* ``entropy`` (EBKD; Kwon et al., "Adaptive Knowledge Distillation Based on Entropy", ICASSP 2020): a
  more certain teacher weighs more, ``w_k = 1 - H(softmax(z_k)) / Σ_j H(softmax(z_j))``;
* ``average``: every teacher alike, ``w_k = 1``.

The term is ``Σ_k Σ_b w_kb T² KL(softmax(z_kb / T) || softmax(s_b / T)) / (B K)`` (the code's
``/ (bsz * teacher_num)``: the confidence weights already sum to 1 over the teachers, so CA-MKD's
term is a weighted mean over teachers divided by K once more, as the authors train it).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Weighting = Literal["confidence", "entropy", "average"]


def teacher_weights(teacher_logits: list[Tensor], targets: Tensor, weighting: Weighting) -> Tensor:
    """Each teacher's weight for each sample, (K, B), as no gradient reaches them (the teachers are frozen)."""
    stacked = torch.stack(teacher_logits)  # (K, B, C)
    if weighting == "confidence":
        ce = torch.stack([F.cross_entropy(z, targets, reduction="none") for z in teacher_logits])
        return (1.0 - F.softmax(ce, dim=0)) / (len(teacher_logits) - 1)
    if weighting == "entropy":
        probs = F.softmax(stacked, dim=-1)
        entropy = -(probs * torch.log(probs)).sum(-1)  # (K, B)
        return 1.0 - entropy / entropy.sum(0, keepdim=True)
    return torch.ones(stacked.shape[:2], dtype=stacked.dtype, device=stacked.device)


def multi_teacher_kl(
    student_logits: Tensor, teacher_logits: list[Tensor], targets: Tensor, temperature: float, weighting: Weighting
) -> Tensor:
    """The weighted soft-target term over K teachers (see the module's docstring)."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    per_sample = torch.stack(
        [
            F.kl_div(log_p_s, F.softmax(z / temperature, dim=1), reduction="none").sum(-1) * temperature**2
            for z in teacher_logits
        ]
    )  # (K, B)
    weights = teacher_weights(teacher_logits, targets, weighting)
    return (weights * per_sample).sum() / (per_sample.shape[1] * len(teacher_logits))
