"""kdzoo: a knowledge-distillation method zoo where every method is a pluggy plugin.

Public API::

    import kdzoo
    kdzoo.list_methods()                 # name -> MethodInfo, from every installed plugin
    kdzoo.get_method("kd", temperature=2) # a method object built from its typed config
    @kdzoo.hookimpl                       # mark hook implementations in your own plugin
"""

from __future__ import annotations

from typing import Any

from kdzoo.errors import KdzooError
from kdzoo.features import ModelInfo, Outputs, StageInfo, Taps, pair_stage
from kdzoo.plugins import MethodInfo, hookimpl, registry
from kdzoo.schedule import Stage, parameters_up_to
from kdzoo.typed import build

__version__ = "0.1.0"

__all__ = [
    "KdzooError",
    "MethodInfo",
    "ModelInfo",
    "Outputs",
    "Stage",
    "StageInfo",
    "Taps",
    "get_method",
    "hookimpl",
    "list_methods",
    "pair_stage",
    "parameters_up_to",
]


def list_methods() -> dict[str, MethodInfo]:
    """Every installed method (built-in and third-party), by name."""
    return dict(registry().methods)


def get_method(name: str, **config: Any) -> object:
    """Build method ``name`` with its config defaults overridden by ``config``."""
    info = registry().get(name)
    return info.factory(build(info.config_class, config, name))
