"""Mixup and CutMix on a training batch, with soft targets, drawn so that runs stay exact.

timm's :class:`timm.data.Mixup` draws from NumPy's global RNG and pairs sample ``i`` with ``n - 1 - i``
of the batch it is given. Under torchrun each process holds a share of the global batch, so its
pairs (and a resumed run's draws) would not be one process's. Here the draws come from a generator
seeded by (seed, epoch, step), the same on every process and after a resume, and each sample is paired
with its neighbour (``i ^ 1``), which lies in the same process's share whenever shares hold an even
number of samples: then N processes mix exactly as one does. The soft targets are timm's
(:func:`timm.data.mixup.one_hot`, smoothed as :func:`timm.data.mixup.mixup_target` smooths them); the
box is :func:`timm.data.mixup.rand_bbox`'s, drawn from that generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class MixedBatch:
    """A batch after mixing: the images, each sample's dominant label (its own when it keeps at least
    half of the image, else its partner's: for methods that need one class per sample) and the soft
    targets (N, classes) the cross-entropy is taken against."""

    inputs: Tensor
    labels: Tensor
    soft_targets: Tensor


class BatchMixing:
    def __init__(
        self,
        *,
        mixup: float,
        cutmix: float,
        prob: float,
        switch_prob: float,
        smoothing: float,
        num_classes: int,
        seed: int,
    ):
        self.mixup, self.cutmix, self.prob, self.switch_prob = mixup, cutmix, prob, switch_prob
        self.smoothing, self.num_classes, self.seed = smoothing, num_classes, seed

    def __call__(self, x: Tensor, y: Tensor, epoch: int, step: int) -> MixedBatch:
        gen = np.random.default_rng([self.seed, epoch, step])
        n = len(y)
        partner = torch.arange(n, device=y.device) ^ 1
        partner[partner >= n] = n - 1  # an odd batch's last sample is its own partner: it stays unmixed
        lam = 1.0
        if gen.random() < self.prob:
            use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or gen.random() < self.switch_prob)
            alpha = self.cutmix if use_cutmix else self.mixup
            lam = float(gen.beta(alpha, alpha))
            if use_cutmix:
                x, lam = self._cut(x, partner, lam, gen)
            else:
                x = x * lam + x[partner] * (1.0 - lam)
        soft = self._targets(y, partner, lam)
        dominant = y if lam >= 0.5 else y[partner]
        return MixedBatch(inputs=x, labels=dominant, soft_targets=soft)

    def _cut(self, x: Tensor, partner: Tensor, lam: float, gen: np.random.Generator) -> tuple[Tensor, float]:
        """The partner's box pasted in (timm's ``rand_bbox``), and the share of the image each keeps."""
        h, w = x.shape[-2:]
        ratio = np.sqrt(1 - lam)
        cut_h, cut_w = int(h * ratio), int(w * ratio)
        cy, cx = int(gen.integers(0, h)), int(gen.integers(0, w))
        y0, y1 = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
        x0, x1 = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
        mixed = x.clone()
        mixed[..., y0:y1, x0:x1] = x[partner][..., y0:y1, x0:x1]
        return mixed, 1.0 - float((y1 - y0) * (x1 - x0)) / (h * w)  # timm's correct_lam: the area as pasted

    def _targets(self, y: Tensor, partner: Tensor, lam: float) -> Tensor:
        from timm.data.mixup import one_hot

        off = self.smoothing / self.num_classes
        on = 1.0 - self.smoothing + off
        own = one_hot(y, self.num_classes, on_value=on, off_value=off)
        return own * lam + own[partner] * (1.0 - lam)
