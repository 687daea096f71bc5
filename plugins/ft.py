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

from kdzoo import KdzooError, MethodInfo, Stage, Taps, hookimpl, registering
from kdzoo.losses.ft import factor_loss, reconstruction_loss
from kdzoo.toolkit.shapes import average_pooled


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
    def kdzoo_plan(self, teacher, student):
        """The (student, teacher) stages: the translator's and the paraphraser's maps."""
        return student.stage(self.config.student_stage), teacher.stage(self.config.teacher_stage)

    @hookimpl
    def kdzoo_feature_taps(self, plan):
        s, t = plan
        return Taps(student=(s.index,), teacher=(t.index,))

    @hookimpl
    def kdzoo_build_modules(self, plan):
        s, t = plan
        factor = max(1, int(t.channels * self.config.rate))
        return {"paraphraser": Paraphraser(t.channels, factor), "translator": Translator(s.channels, factor)}

    @hookimpl
    def kdzoo_schedule(self, epochs, modules):
        paraphraser, translator = modules["paraphraser"], modules["translator"]
        return [
            Stage(
                "paraphrase",
                self.config.paraphrase_epochs,
                losses=frozenset({"ft_reconstruction"}),
                trainable=lambda _student, _modules: paraphraser.parameters(),
            ),
            Stage(
                "train",
                epochs,
                losses=frozenset({"ce", "ft"}),
                trainable=lambda student, _modules: [*student.parameters(), *translator.parameters()],
            ),
        ]

    @hookimpl
    def kdzoo_compute_losses(self, student, teacher, stage, plan, modules):
        s, t = plan
        target = teacher.feature(t.index)
        # kept: each of FT's stages switches one of its two terms on, and the other must not run there: the
        # paraphrase stage runs no student forward at all, and the train stage must not run the paraphraser's
        # decoder (nor update its BatchNorm statistics) for a dropped reconstruction
        if stage.term_on("ft_reconstruction"):
            _, reconstruction = modules["paraphraser"](target)
            return {"ft_reconstruction": reconstruction_loss(reconstruction, target)}
        with torch.no_grad():  # the paraphraser is frozen after its stage: its factor is a fixed target
            teacher_factor = modules["paraphraser"].encoder(target)
        student_factor = modules["translator"](student.feature(s.index))
        student_factor = average_pooled(student_factor, tuple(teacher_factor.shape[-2:]))
        return {"ft": factor_loss(student_factor, teacher_factor)}

    @hookimpl
    def kdzoo_loss_weights(self):
        return {"ce": self.config.ce_weight, "ft": self.config.weight, "ft_reconstruction": 1.0}


kdzoo_register_methods = registering(
    MethodInfo(
        name="ft",
        factory=FactorTransfer,
        config_class=FTConfig,
        paper="Kim, Park, Kwak. Paraphrasing Complex Network: Network Compression via Factor Transfer. "
        "NeurIPS 2018. arXiv:1802.04977",
        summary="a paraphraser stage on the teacher's last map, then CE + L1 of translated vs paraphrased factors",
        kind="feature",
        batch="local",  # a mean of per-sample terms: this process's share is enough
        terms=("ft_reconstruction", "ft"),
    )
)
