"""Pre-activation taps: a stage's map before the activation that ends it (pre-ReLU features).

A stage that ends in an activation (a ResNet stage's last ``act``, often in place) is tapped at
that activation's input: the map after the residual sum, before the non-linearity. Which module
ends the stage is seen during the forward pass, not guessed: the stage's output must be the very
tensor its last registered activation returned; otherwise (a transformer block, a linear
bottleneck) the stage has no final activation and its output is its pre-activation map.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from kdzoo.api import KdzooError, ModelInfo

#: where torch and timm keep their activation modules
_ACTIVATION_MODULES = ("torch.nn.modules.activation", "timm.layers.activations", "timm.layers.activations_me")


def is_activation(module: nn.Module) -> bool:
    return type(module).__module__ in _ACTIVATION_MODULES


def last_activation(stage: nn.Module) -> nn.Module | None:
    """The activation module registered last inside ``stage`` (``stage`` itself if it is one)."""
    if is_activation(stage):
        return stage
    found = None
    for module in stage.modules():
        if is_activation(module):
            found = module
    return found


class PreActivationTaps:
    """Forward hooks that keep the pre-activation map of each requested stage for one forward pass."""

    def __init__(self, model: nn.Module, info: ModelInfo, indices: Iterable[int], to_nchw):
        self.values: dict[int, Tensor] = {}
        self._seen: dict[int, tuple[Tensor, Tensor]] = {}  # stage -> (activation input, its output)
        self._to_nchw = to_nchw
        self.handles = []
        for i in sorted({info.resolve(i) for i in indices}):
            path = info.stages[i].module
            try:
                stage = model.get_submodule(path)
            except AttributeError:
                raise KdzooError(f"{info.name}: feature_info module '{path}' not found") from None
            act = last_activation(stage)
            if act is not None:
                self.handles.append(act.register_forward_pre_hook(self._before(i, act)))
                self.handles.append(act.register_forward_hook(self._after(i)))
            self.handles.append(stage.register_forward_hook(self._stage_done(i)))

    def _before(self, index: int, act: nn.Module):
        in_place = bool(getattr(act, "inplace", False))

        def keep(_module, inputs):
            # an in-place activation overwrites its input: keep a copy of what it is about to change
            self._seen[index] = (inputs[0].clone() if in_place else inputs[0], None)

        return keep

    def _after(self, index: int):
        def keep(_module, _inputs, output):
            self._seen[index] = (self._seen[index][0], output)

        return keep

    def _stage_done(self, index: int):
        def keep(_module, _inputs, output):
            before, after = self._seen.pop(index, (None, None))
            self.values[index] = self._to_nchw(before if after is not None and output is after else output)

        return keep

    def take(self) -> dict[int, Tensor]:
        values, self.values, self._seen = self.values, {}, {}
        return values

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
