"""Decoupled Knowledge Distillation (DKD).

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

Conventions (checked in ``tests/methods/test_dkd.py``):

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

``logit_standardization: true`` z-scores both models' logits before softening (Sun et al., CVPR
2024), as that paper applies it to DKD.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo import KdzooError, MethodInfo, hookimpl, linear_warmup, registering
from kdzoo.losses.dkd import dkd_terms
from kdzoo.losses.kd import standardize

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
    logit_standardization: bool = False  # z-score logits before softening (Sun et al., CVPR 2024)

    def validate(self, where: str) -> None:
        """Called by kdzoo after building the config (``where`` is the section name, ``dkd``)."""
        from kdzoo.config.checks import non_negative

        non_negative(self, where, "ce_weight", "alpha", "beta")
        if self.temperature <= 0:
            raise KdzooError(f"config key '{where}.temperature': must be > 0, got {self.temperature}")
        if self.warmup_epochs < 0:
            raise KdzooError(f"config key '{where}.warmup_epochs': must be >= 0, got {self.warmup_epochs}")


def dkd_weights(config: DKDConfig, epoch: int | None) -> dict[str, float]:
    """The weights of ``ce``, ``dkd_tckd`` and ``dkd_nckd`` at 0-based ``epoch`` (``None``: warmed up)."""
    ramp = 1.0 if epoch is None else linear_warmup(epoch, config.warmup_epochs)
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
    def kdzoo_compute_losses(self, student, teacher, targets):
        s, t = student.logits, teacher.logits
        if self.config.logit_standardization:
            s, t = standardize(s), standardize(t)
        tckd, nckd = dkd_terms(s, t, targets, self.config.temperature)
        return {TCKD: tckd, NCKD: nckd}

    @hookimpl
    def kdzoo_loss_weights(self, epoch):
        # the warm-up lives here, never inside the loss: the terms stay comparable across epochs
        return dkd_weights(self.config, epoch)


kdzoo_register_methods = registering(
    MethodInfo(
        name="dkd",
        factory=DKD,
        config_class=DKDConfig,
        paper="Zhao, Cui, Song, Qiu, Liang. Decoupled Knowledge Distillation. CVPR 2022. arXiv:2203.08679",
        summary="KD split into target-class (TCKD) and non-target-class (NCKD) terms, weighted alpha and beta",
        kind="logit",
        batch="local",  # a mean of per-sample terms: this process's share is enough
        terms=(TCKD, NCKD),
    )
)
