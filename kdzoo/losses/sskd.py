"""SSKD's terms (Xu, Liu, Li, Loy, "Knowledge Distillation Meets Self-Supervision", ECCV 2020;
torchdistill's ``AuxSSKDLoss`` / ``SSKDLoss``, the authors' ``teacher.py`` / ``student.py``), on tensors.

Rotated copies of each image are the self-supervision task: a projection head maps each model's
embedding to a representation, and each rotated copy's representation is compared by cosine
similarity with every unrotated one of the batch. The teacher's head learns to pick out the copy's
own source (cross-entropy over the similarities); the student then matches the teacher's softened
similarities (SS-KD) and its softened predictions on the rotated copies (T-SS KD), both on the rows
the teacher gets right plus the best-ranked fraction of the others.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import full_precision


def similarities(rotated: Tensor, normal: Tensor) -> Tensor:
    """(R, B) cosine similarities of each rotated copy's representation (R x D) with every unrotated
    one (B x D)."""
    return F.cosine_similarity(rotated.unsqueeze(2), normal.T.unsqueeze(0), dim=1)


def contrastive_prediction_loss(rotated: Tensor, normal: Tensor, source: Tensor) -> Tensor:
    """The teacher head's task: cross-entropy of each rotated copy's similarities against the index of
    its unrotated source (temperature 1)."""
    return F.cross_entropy(similarities(rotated, normal), source)


def kept_rows(scores: Tensor, target: Tensor, ratio: float) -> Tensor:
    """Rows to distil, in order: those whose ``target`` the scores rank first, plus ``ratio`` of the
    others, the best-ranked first (the authors' selection; ties kept in row order)."""
    rank = (torch.argsort(scores, dim=1, descending=True) == target.unsqueeze(1)).long().argmax(dim=1)
    wrong = int(torch.count_nonzero(rank))
    keep = len(rank) - wrong + int(wrong * ratio)
    return torch.sort(torch.argsort(rank, stable=True)[:keep]).values


def softened_kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 KL(softmax(t/T) || softmax(s/T))``, batchmean over the given rows."""
    log_p = F.log_softmax(student / temperature, dim=1)
    return F.kl_div(log_p, F.softmax(teacher.detach() / temperature, dim=1), reduction="batchmean") * temperature**2


def sskd_terms(
    student_logits: tuple[Tensor, Tensor],
    teacher_logits: tuple[Tensor, Tensor],
    student_reps: tuple[Tensor, Tensor],
    teacher_reps: tuple[Tensor, Tensor],
    targets: Tensor,
    source: Tensor,
    temperatures: tuple[float, float, float] = (4.0, 4.0, 0.5),
    ratios: tuple[float, float] = (1.0, 0.75),
) -> dict[str, Tensor]:
    """The student's three distillation terms. Each pair is (unrotated rows, rotated rows); ``source``
    is the unrotated row of each rotated one; temperatures (KD, T-SS, SS), ratios (T-SS, SS).

    * ``unrotated`` (the paper's KD term): KD on the unrotated images;
    * ``rotated`` (T-SS KD): KD on the rotated copies, on the rows whose label the teacher ranks first
      plus ``ratios[0]`` of the others;
    * ``similarity`` (SS-KD): KL between the softened similarity rows of the two heads, on the rows
      whose source the teacher's head ranks first plus ``ratios[1]`` of the others.
    """
    kd_t, tf_t, ss_t = temperatures
    s_normal, s_rotated = (full_precision(z) for z in student_logits)
    t_normal, t_rotated = (full_precision(z).detach() for z in teacher_logits)
    tf_rows = kept_rows(F.softmax(t_rotated / tf_t, dim=1), targets[source], ratios[0])
    s_sim = similarities(full_precision(student_reps[1]), full_precision(student_reps[0]))
    t_sim = similarities(full_precision(teacher_reps[1]), full_precision(teacher_reps[0])).detach()
    ss_rows = kept_rows(t_sim, source, ratios[1])
    return {
        "unrotated": softened_kl(s_normal, t_normal, kd_t),
        "rotated": softened_kl(s_rotated[tf_rows], t_rotated[tf_rows], tf_t),
        "similarity": softened_kl(s_sim[ss_rows], t_sim[ss_rows], ss_t),
    }
