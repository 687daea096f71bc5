"""The representation term of SRD (Miles & Mikolajczyk, "Understanding the Role of the Projector in
Knowledge Distillation", AAAI 2024): ``log sum |z_s - z_t|^p`` over the batch and the dimensions,
on embeddings that a projector and batch normalisation without affine parameters have already put
on one scale (``p = 4`` in the authors' code). The log makes the term's gradient independent of the
distance's scale.
"""

from __future__ import annotations

from torch import Tensor


def srd_loss(student_normalized: Tensor, teacher_normalized: Tensor, exponent: float = 4.0) -> Tensor:
    """``log(sum(|z_s - z_t| ** exponent))`` over every element of the (B, D) embeddings."""
    return (student_normalized - teacher_normalized.detach()).abs().pow(exponent).sum().log()
