"""Training stages: the unit a method's schedule is made of.

A stage says how many epochs it runs, which loss terms are on, which parameters train and, when
it needs one, its own optimizer settings. The core runs stages in order with a fresh optimizer and
LR schedule per stage (FitNets' hint stage uses Adam while the KD stage uses SGD, say).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

TrainableFn = Callable[[nn.Module, nn.ModuleDict], Iterable[nn.Parameter]]


@dataclass(frozen=True)
class Stage:
    """One named phase of training.

    ``losses``: names of the loss terms switched on (``None``: every term).
    ``trainable``: ``fn(student, method_modules) -> parameters`` that train (``None``: all of them).
    ``optim``: overrides of the run's ``optim`` section for this stage, e.g. ``{"name": "adam"}``.
    """

    name: str
    epochs: int
    losses: frozenset[str] | None = None
    trainable: TrainableFn | None = None
    optim: dict[str, Any] = field(default_factory=dict)

    def term_on(self, term: str) -> bool:
        return self.losses is None or term in self.losses


def parameters_up_to(model: nn.Module, module_path: str) -> list[nn.Parameter]:
    """The parameters registered before and inside ``module_path``.

    timm registers modules in forward order (its own ``FeatureListNet`` truncates a model the same
    way), so these are the parameters that feed the feature map at ``module_path``.
    """
    chosen: list[nn.Parameter] = []
    found = False
    for name, module in model.named_modules():
        inside = name == module_path or name.startswith(module_path + ".")
        if found and not inside:
            break
        found = found or inside
        chosen.extend(module.parameters(recurse=False))
    if not found:
        raise ValueError(f"{type(model).__name__} has no module '{module_path}'")
    return chosen
