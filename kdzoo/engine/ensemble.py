"""Several teachers as one: the ensemble a run's methods learn from (``teachers:``).

The members run on the same batch, each on its own input, made on the device from the ensemble's (the
first teacher's: re-normalised, resized, :class:`kdzoo.data.inputs.InputAdapter`). The ensemble's
logits are the mean of theirs, so its softened predictions at any temperature T are the normalised
geometric mean of the members' (``softmax(mean_k z_k / T) ∝ Π_k softmax(z_k / T)^(1/K)``; Hinton et
al. 2015 name the arithmetic and the geometric mean of the members' distributions as an ensemble's
soft targets, and only the geometric one is a logit vector at every temperature): every logit method
distils the ensemble as it distils one teacher, and two identical teachers give one teacher's terms
exactly.

Each member's own logits are a stage of the ensemble (its ``feature_info``: the member's output), so
the core's one teacher forward, its teacher-output cache and its gathering across processes carry
them as they carry any tapped map; a method that takes ``teachers`` receives them as each teacher's
:class:`~kdzoo.Outputs` (the objective makes them from the ensemble's outputs).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdzoo.errors import KdzooError


class TeacherEnsemble(nn.Module):
    """``members`` (frozen teachers), each fed through its ``adapters`` entry (``None``: the ensemble's
    input is its own); ``forward`` gives the mean of their logits."""

    def __init__(self, members: list[nn.Module], adapters: list[nn.Module | None], names: list[str]):
        super().__init__()
        classes = [int(getattr(member, "num_classes", 0) or 0) for member in members]
        if len(set(classes)) != 1:
            said = ", ".join(f"{name}: {n}" for name, n in zip(names, classes, strict=True))
            raise KdzooError(f"teachers: every teacher must predict the same classes, and they have {said}")
        self.members = nn.ModuleList(members)
        self.adapters = nn.ModuleList([adapter if adapter is not None else nn.Identity() for adapter in adapters])
        self.names = list(names)
        self.num_classes = classes[0]
        # each member's logits, a "stage" the feature extractor taps by its module path
        self.feature_info = [
            {"num_chs": self.num_classes, "reduction": 1, "module": f"members.{k}"} for k in range(len(members))
        ]

    def forward(self, x: Tensor) -> Tensor:
        logits = [member(adapt(x)) for member, adapt in zip(self.members, self.adapters, strict=True)]
        return torch.stack(logits).mean(0)
