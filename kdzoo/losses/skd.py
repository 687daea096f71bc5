"""Streamlined KD (Jeong, Lee, Choi, CVPR 2026): an instance-wise and a direction-wise term on logits.

* instance: the soft-target KL of the logits.
* direction: the B x B Gram matrices of the L2-normalised logits; each row of their difference is
  measured with the Mahalanobis distance under the rows' covariance plus ``tikhonov * I``, the
  square roots averaged over the batch.

Two forms. ``paper`` is the equations: the plain KL (batchmean, no ``T^2``) and the Gram
matrices as they are. ``code`` is the authors' repository (``Distiller/SKD.py``), with which the
CIFAR-100 table was made: the KL carries ``T^2``, the Gram matrices are divided by the number of
classes, and each term is multiplied by a confidence mask that is *averaged*, not applied per
sample: the batch's KL times the fraction of samples whose teacher confidence is at most the batch
median, and the direction term times the fraction of classes whose summed teacher probability is at
most the median (both about 0.5). torchdistill's ``SKDInstanceLoss`` in ``code`` mode masks the
KL per sample instead, another number (see docs/differences-from-torchdistill.md).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kdzoo.api import full_precision, soft_target_kl

Form = Literal["code", "paper"]


def _fraction_at_most_median(values: Tensor) -> Tensor:
    # np.percentile(.., 50) in the authors' code; torch.quantile interpolates the same way
    return values.le(torch.quantile(values, 0.5)).float().mean()


def skd_instance_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0, form: Form = "code"
) -> Tensor:
    if form == "paper":
        t = float(temperature)
        return soft_target_kl(student_logits, teacher_logits, t) / (t * t)
    confidence = F.softmax(full_precision(teacher_logits.detach()), dim=1).amax(dim=1)
    return soft_target_kl(student_logits, teacher_logits, temperature) * _fraction_at_most_median(confidence)


def skd_direction_loss(
    student_logits: Tensor, teacher_logits: Tensor, tikhonov: float = 0.1, form: Form = "code"
) -> Tensor:
    classes = student_logits.shape[1]
    scale = classes if form == "code" else 1.0
    s = F.normalize(student_logits, p=2, dim=1)
    t = F.normalize(teacher_logits.detach(), p=2, dim=1)
    diff = (s @ s.t() - t @ t.t()) / scale
    covariance = torch.cov(diff.t()) + tikhonov * torch.eye(diff.shape[1], device=diff.device, dtype=diff.dtype)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(covariance))
    distance = ((diff @ inverse) * diff).sum(dim=1).sqrt().mean()
    if form == "paper":
        return distance
    class_confidence = F.softmax(full_precision(teacher_logits.detach()), dim=1).sum(dim=0)
    return distance * _fraction_at_most_median(class_confidence)
