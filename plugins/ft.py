"""Factor transfer: Kim, Park, Kwak. "Paraphrasing Complex Network: Network Compression via Factor
Transfer". NeurIPS 2018. https://arxiv.org/abs/1802.04977

A *paraphraser* (a convolutional autoencoder on the teacher's last feature map, factor rate 0.5) is
first trained alone to reconstruct that map (stage ``paraphrase``: only the paraphraser trains; the
teacher stays frozen); then the student trains with CE plus the factor loss between a *translator*
on its own last map and the paraphraser's (now frozen) factor: the L1 distance of the L2-normalised
factors (stage ``train``). Defaults: RepDistiller's CIFAR-100 setting, 30 epochs of paraphrasing,
factor loss weight 200 (``-b 200``), leaky ReLU 0.1 and BN in both modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdzoo import KdzooError, MethodInfo, Stage, Taps, full_precision, hookimpl
from kdzoo.losses.ft import factor_loss, reconstruction_loss
from kdzoo.losses.shapes import average_pooled


@dataclass
class FTConfig:
    weight: float = 200.0
    ce_weight: float = 1.0
    rate: float = 0.5  # factor channels / teacher channels
    paraphrase_epochs: int = 30
    student_stage: int = -1
    teacher_stage: int = -1

    def validate(self, where: str) -> None:
        from kdzoo.config.checks import non_negative, positive

        if self.paraphrase_epochs < 1:
            raise KdzooError(f"config key '{where}.paraphrase_epochs': the paraphraser needs >= 1 epoch")
        non_negative(self, where, "weight", "ce_weight")
        positive(self, where, "rate")


def _conv(cin: int, cout: int, transposed: bool = False) -> list[nn.Module]:
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(cin, cout, 3, 1, 1)
    return [conv, nn.BatchNorm2d(cout), nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    """Teacher map (C) -> factor (rate x C) -> reconstruction (C)."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        c, f = channels, factor_channels
        self.encoder = nn.Sequential(*_conv(c, c), *_conv(c, f), *_conv(f, f))
        self.decoder = nn.Sequential(*_conv(f, f, True), *_conv(f, c, True), *_conv(c, c, True))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Sequential):
    """Student map (Cs) -> factor (rate x Ct)."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__(
            *_conv(channels, channels), *_conv(channels, factor_channels), *_conv(factor_channels, factor_channels)
        )


class FactorTransfer:
    def __init__(self, config: FTConfig):
        self.config = config

    @hookimpl
    def kdzoo_feature_taps(self, teacher, student):
        self.s, self.t = student.resolve(self.config.student_stage), teacher.resolve(self.config.teacher_stage)
        return Taps(student=(self.s,), teacher=(self.t,))

    @hookimpl
    def kdzoo_build_modules(self, teacher, student):
        factor = max(1, int(teacher.stages[self.t].channels * self.config.rate))
        self.paraphraser = Paraphraser(teacher.stages[self.t].channels, factor)
        self.translator = Translator(student.stages[self.s].channels, factor)
        return {"paraphraser": self.paraphraser, "translator": self.translator}

    @hookimpl
    def kdzoo_schedule(self, epochs):
        return [
            Stage(
                "paraphrase",
                self.config.paraphrase_epochs,
                losses=frozenset({"ft_reconstruction"}),
                trainable=lambda _student, _modules: self.paraphraser.parameters(),
            ),
            Stage(
                "train",
                epochs,
                losses=frozenset({"ce", "ft"}),
                trainable=lambda student, _modules: [*student.parameters(), *self.translator.parameters()],
            ),
        ]

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, stage):
        target = full_precision(teacher.feature(self.t))
        if stage.term_on("ft_reconstruction"):
            _, reconstruction = self.paraphraser(target)
            return {"ft_reconstruction": reconstruction_loss(reconstruction, target)}
        if not stage.term_on("ft"):
            return {}
        with torch.no_grad():  # the paraphraser is frozen after its stage: its factor is a fixed target
            teacher_factor = self.paraphraser.encoder(target)
        student_factor = self.translator(student.feature(self.s))
        student_factor = average_pooled(student_factor, tuple(teacher_factor.shape[-2:]))
        return {"ft": factor_loss(full_precision(student_factor), teacher_factor)}

    @hookimpl
    def kdzoo_loss_weights(self):
        return {"ce": self.config.ce_weight, "ft": self.config.weight, "ft_reconstruction": 1.0}


@hookimpl
def kdzoo_register_methods(register):
    register(
        MethodInfo(
            name="ft",
            factory=FactorTransfer,
            config_class=FTConfig,
            paper="Kim, Park, Kwak. Paraphrasing Complex Network: Network Compression via Factor Transfer. "
            "NeurIPS 2018. arXiv:1802.04977",
            summary="a paraphraser stage on the teacher's last map, then CE + L1 of translated vs paraphrased factors",
            kind="feature",
            batch="local",  # a mean of per-sample terms: this process's share is enough
        )
    )
