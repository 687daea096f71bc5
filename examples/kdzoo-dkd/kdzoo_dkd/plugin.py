"""Decoupled Knowledge Distillation (DKD) as a kdzoo method plugin.

Zhao, Cui, Song, Qiu, Liang. "Decoupled Knowledge Distillation". CVPR 2022.
https://arxiv.org/abs/2203.08679 (reference code: megvii-research/mdistiller, ``DKD.py``)

The paper splits Hinton's KD loss into a part about the target class and a part about the others.
With ``p = softmax(z / T)`` for the teacher (T) and the student (S) and ``t`` the label of a sample:

* **TCKD** (target-class KD): ``T^2 * KL(b^T || b^S)`` with the binary distribution
  ``b = [p_t, 1 - p_t]`` (how sure each model is of the target class);
* **NCKD** (non-target-class KD): ``T^2 * KL(p_hat^T || p_hat^S)`` with ``p_hat`` the softmax over
  the C - 1 non-target classes only (the "dark knowledge" among the wrong classes).

Classic KD equals ``TCKD + (1 - p_t^T) * NCKD`` per sample, which ties NCKD's weight to the
teacher's confidence; DKD weights the two freely:
``L = ce_weight * CE + w(epoch) * (alpha * TCKD + beta * NCKD)``.

Conventions (checked in ``tests/test_dkd.py``):

* both KLs are reduced ``batchmean`` (sum over classes, mean over the batch) and multiplied by T^2,
  as mdistiller does (``size_average=False`` then ``/ batch_size``);
* mdistiller removes the target class from NCKD's softmax by subtracting 1000 from the scaled
  target logit; here the C - 1 non-target log-probabilities are taken exactly (a boolean mask), in
  log space, which is the same up to ``exp(-1000)`` and stays finite when ``p_t`` rounds to 1;
* the teacher's logits never carry gradient (detached);
* the terms are returned **unweighted** as ``dkd_tckd`` and ``dkd_nckd``; alpha, beta, CE's weight
  and mdistiller's linear warm-up ``w(epoch) = min(epoch / warmup, 1)`` (epoch counted from 1 there)
  live in ``kdzoo_loss_weights``, where kdzoo counts ``epoch`` from 0: ``w = min((epoch + 1) / 20, 1)``.

Defaults are mdistiller's CIFAR-100 setting (``CFG.DKD``): ce_weight 1, alpha 1, beta 8, T = 4,
warm-up 20 epochs. Its ImageNet setting is ``beta=0.5, temperature=1, warmup_epochs=1``, and some
CIFAR-100 pairs use another beta (6 for wrn-40-2 -> wrn-16-2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kdzoo import KdzooError, MethodInfo, hookimpl
from torch import Tensor, nn

TCKD = "dkd_tckd"
NCKD = "dkd_nckd"


@dataclass
class DKDConfig:
    """DKD's knobs; the defaults are mdistiller's CIFAR-100 setting."""

    temperature: float = 4.0
    ce_weight: float = 1.0
    alpha: float = 1.0  # weight of TCKD
    beta: float = 8.0  # weight of NCKD
    warmup_epochs: int = 20  # linear warm-up of both KD terms; 0 switches it off

    def validate(self, where: str) -> None:
        """Called by kdzoo after building the config (``where`` is the section name, ``dkd``)."""
        if self.temperature <= 0:
            raise KdzooError(f"config key '{where}.temperature': must be > 0, got {self.temperature}")
        if self.warmup_epochs < 0:
            raise KdzooError(f"config key '{where}.warmup_epochs': must be >= 0, got {self.warmup_epochs}")


def _binary_and_non_target(log_p: Tensor, target_mask: Tensor) -> tuple[Tensor, Tensor]:
    """From log-probabilities (B, C): ``log [p_t, 1 - p_t]`` (B, 2) and ``log p_hat`` (B, C - 1)."""
    batch, classes = log_p.shape
    log_target = log_p[target_mask]  # (B,): one target per row, in row order
    log_others = log_p[~target_mask].view(batch, classes - 1)
    log_rest = torch.logsumexp(log_others, dim=1)  # log(1 - p_t), without computing 1 - p_t
    binary = torch.stack([log_target, log_rest], dim=1)
    non_target = F.log_softmax(log_others, dim=1)  # softmax over the non-target classes only
    return binary, non_target


def dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float = 4.0
) -> tuple[Tensor, Tensor]:
    """DKD's two unweighted terms ``(TCKD, NCKD)`` for one batch (Zhao et al., CVPR 2022).

    ``student_logits`` and ``teacher_logits``: (B, C) with C >= 2; ``targets``: (B,) class indices.
    Each term is ``T^2 * KL(teacher || student)`` reduced ``batchmean``; the teacher is detached.
    """
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"DKD needs (batch, classes) logits of the same shape, got student {tuple(student_logits.shape)} "
            f"and teacher {tuple(teacher_logits.shape)}"
        )
    batch, classes = student_logits.shape
    if classes < 2:
        raise ValueError("DKD needs at least 2 classes (NCKD is a distribution over the non-target ones)")
    if targets.is_floating_point() or targets.numel() != batch:
        raise ValueError(f"DKD needs one class index per sample, got targets of shape {tuple(targets.shape)}")
    t = float(temperature)
    target_mask = F.one_hot(targets.reshape(-1).long(), classes).bool()
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    s_binary, s_non_target = _binary_and_non_target(log_p_student, target_mask)
    t_binary, t_non_target = _binary_and_non_target(log_p_teacher, target_mask)
    tckd = F.kl_div(s_binary, t_binary, reduction="batchmean", log_target=True) * (t * t)
    nckd = F.kl_div(s_non_target, t_non_target, reduction="batchmean", log_target=True) * (t * t)
    return tckd, nckd


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """mdistiller's linear warm-up of the KD terms for a 0-based ``epoch``: ``min((epoch + 1) / warmup, 1)``.

    mdistiller counts epochs from 1 and uses ``min(epoch / warmup, 1)``, so its first epoch already
    gets ``1 / warmup``; the two are the same schedule. ``warmup_epochs=0``: always 1.
    """
    if warmup_epochs <= 0:
        return 1.0
    return min((epoch + 1) / warmup_epochs, 1.0)


def dkd_weights(config: DKDConfig, epoch: int | None) -> dict[str, float]:
    """The weights of ``ce``, ``dkd_tckd`` and ``dkd_nckd`` at 0-based ``epoch`` (``None``: warmed up)."""
    ramp = 1.0 if epoch is None else warmup_factor(epoch, config.warmup_epochs)
    return {"ce": config.ce_weight, TCKD: config.alpha * ramp, NCKD: config.beta * ramp}


class DKDLoss(nn.Module):
    """The whole DKD objective for your own training loop (no kdzoo engine needed).

    ``forward(student_logits, teacher_logits, targets, epoch=None)`` returns
    ``ce_weight * CE + w * (alpha * TCKD + beta * NCKD)`` with ``w`` the warm-up factor at 0-based
    ``epoch`` (``epoch=None``: no warm-up, ``w = 1``). Afterwards ``last_terms`` holds the
    unweighted, detached ``dkd_tckd`` / ``dkd_nckd`` (and ``ce``) for logging.

    >>> criterion = DKDLoss()                                               # doctest: +SKIP
    >>> loss = criterion(student(x), teacher(x), y, epoch=epoch)            # doctest: +SKIP
    """

    def __init__(
        self,
        temperature: float = 4.0,
        ce_weight: float = 1.0,
        alpha: float = 1.0,
        beta: float = 8.0,
        warmup_epochs: int = 20,
    ):
        super().__init__()
        self.config = DKDConfig(temperature, ce_weight, alpha, beta, warmup_epochs)
        self.config.validate("DKDLoss")
        self.last_terms: dict[str, Tensor] = {}

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, epoch: int | None = None
    ) -> Tensor:
        tckd, nckd = dkd_terms(student_logits, teacher_logits, targets, self.config.temperature)
        ce = F.cross_entropy(student_logits, targets)
        weights = dkd_weights(self.config, epoch)
        self.last_terms = {"ce": ce.detach(), TCKD: tckd.detach(), NCKD: nckd.detach()}
        return weights["ce"] * ce + weights[TCKD] * tckd + weights[NCKD] * nckd


class DKD:
    """DKD on logits: no feature taps, no trainable modules, kdzoo's default single stage."""

    def __init__(self, config: DKDConfig):
        self.config = config

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, targets, stage):
        wanted = [name for name in (TCKD, NCKD) if stage.term_on(name)]
        if teacher is None or not wanted:  # a stage of a stacked method may switch DKD off
            return {}
        tckd, nckd = dkd_terms(student.logits, teacher.logits, targets, self.config.temperature)
        return {name: value for name, value in ((TCKD, tckd), (NCKD, nckd)) if name in wanted}

    @hookimpl
    def kdzoo_loss_weights(self, epoch):
        # the warm-up lives here, never inside the loss: the terms stay comparable across epochs
        return dkd_weights(self.config, epoch)


@hookimpl
def kdzoo_register_methods(register):
    register(
        MethodInfo(
            name="dkd",
            factory=DKD,
            config_class=DKDConfig,
            paper="Zhao, Cui, Song, Qiu, Liang. Decoupled Knowledge Distillation. CVPR 2022. arXiv:2203.08679",
            summary="KD split into target-class (TCKD) and non-target-class (NCKD) terms, weighted alpha and beta",
        )
    )
