"""Prime-aware adaptive distillation with the L2 loss (Zhang et al., ECCV 2020).

The student predicts a log-variance per embedding dimension; the L2 distance to the teacher's
embedding is divided by that variance and the log-variance is added, so the student down-weights
the samples it finds hard (high variance) and concentrates on the "prime" ones:
``mean_b mean_d [(t - s)^2 / (eps + exp(v)) + v]`` (the authors' code, as torchdistill's
``PADL2Loss``, averages over the dimensions and the batch).
"""

from __future__ import annotations

from torch import Tensor


def pad_l2_loss(
    student_embedding: Tensor, teacher_embedding: Tensor, log_variance: Tensor, eps: float = 1e-6
) -> Tensor:
    """The variance-weighted L2 of (B, D) embeddings with the student's (B, D) log-variances."""
    squared = (teacher_embedding.detach() - student_embedding).square()
    return (squared / (eps + log_variance.exp()) + log_variance).mean()
