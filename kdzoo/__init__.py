"""kdzoo: a knowledge-distillation method zoo where every method is a pluggy plugin.

Public API::

    import kdzoo
    kdzoo.list_methods()                                  # name -> MethodInfo, from every plugin
    loss_fn = kdzoo.get_method("at", teacher=t, student=s) # an nn.Module loss for your own loop
    kdzoo.distill(t, s, train_loader, val_loader, methods=["kd", "at"])  # the whole engine
    @kdzoo.hookimpl                                       # mark hooks in your own plugin
"""

from __future__ import annotations

from kdzoo.errors import KdzooError
from kdzoo.features import ModelInfo, Outputs, StageInfo, Summary, Taps, pair_stage
from kdzoo.library import distill, get_method, list_methods, method_config
from kdzoo.objective import Objective
from kdzoo.plugins import MethodInfo, hookimpl
from kdzoo.schedule import Stage, parameters_up_to

__version__ = "0.1.0"

__all__ = [
    "KdzooError",
    "MethodInfo",
    "ModelInfo",
    "Objective",
    "Outputs",
    "Stage",
    "StageInfo",
    "Summary",
    "Taps",
    "distill",
    "get_method",
    "hookimpl",
    "list_methods",
    "method_config",
    "pair_stage",
    "parameters_up_to",
]


def _load_plugins() -> None:
    """Load the installed plugins now, so models they register exist for ``timm.create_model``."""
    from kdzoo.plugins import registry

    registry()


_load_plugins()
