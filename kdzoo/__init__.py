"""kdzoo: a knowledge-distillation method zoo where every method is a pluggy plugin.

Public API::

    import kdzoo
    kdzoo.list_methods()                                   # name -> MethodInfo, from every plugin
    loss_fn = kdzoo.get_method("at", teacher=t, student=s)  # an nn.Module loss for your own loop
    loss_fn = kdzoo.get_method(["kd", "at"], teacher=t, student=s)  # methods stack
    kdzoo.distill(t, s, train_loader, val_loader, methods=["kd", "at"])  # the whole engine
    kdzoo.load_student("runs/.../student.safetensors")     # what a run deployed, with its weights
    kdzoo.losses.rkd_angle_loss(student_embedding, teacher_embedding)    # any built-in loss on tensors

Writing a method: everything it touches is here too (from :mod:`kdzoo.api`): ``hookimpl``,
``MethodInfo``, ``ModelInfo``, ``StageInfo``, ``Taps``, ``Summary``, ``Outputs``, ``Stage``,
``TrainingSet``, ``View``, ``WHOLE_RUN``, ``Run``, ``pair_stage``, ``pair_stages``, ``inner_stages``,
``parameters_up_to``, ``linear_warmup``, ``soft_target_kl``, ``full_precision``, ``KdzooError``.

``import kdzoo`` loads the installed plugins, so the models they register exist for
``timm.create_model``. The ``kdzoo`` command is the exception: it imports this package with nothing
behind the names above until one is used, and each command loads the plugins when it needs them, so
``kdzoo --help`` and ``kdzoo --version`` import neither plugins nor torch (a slow or broken plugin
cannot delay or stop them).
"""

# ruff: noqa: F401 - the names imported for type checkers are re-exported through __all__, built from _SOURCES
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: every public name, and the module it comes from (imported on first use)
_SOURCES = {
    **dict.fromkeys(
        [
            "INPUT_VIEW",
            "WHOLE_RUN",
            "Batch",
            "DatasetInfo",
            "LoggerInfo",
            "DatasetSplits",
            "KdzooError",
            "MethodInfo",
            "ModelInfo",
            "Outputs",
            "Run",
            "Stage",
            "StageInfo",
            "StepResult",
            "Summary",
            "Taps",
            "TrainingSet",
            "View",
            "When",
            "hookimpl",
            "inner_stages",
            "linear_warmup",
            "pair_inner_stages",
            "pair_stage",
            "pair_stages",
            "full_precision",
            "parameters_up_to",
            "registering",
            "soft_target_kl",
        ],
        "kdzoo.api",
    ),
    "load_student": "kdzoo.engine.deployed",
    "Objective": "kdzoo.engine.objective",
    **dict.fromkeys(["distill", "get_method", "list_methods", "method_config"], "kdzoo.library"),
}

__all__ = sorted(_SOURCES)

if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly (re-exported: __all__)
    from kdzoo.api import (
        INPUT_VIEW,
        WHOLE_RUN,
        Batch,
        DatasetInfo,
        DatasetSplits,
        KdzooError,
        LoggerInfo,
        MethodInfo,
        ModelInfo,
        Outputs,
        Run,
        Stage,
        StageInfo,
        StepResult,
        Summary,
        Taps,
        TrainingSet,
        View,
        When,
        full_precision,
        hookimpl,
        inner_stages,
        linear_warmup,
        pair_inner_stages,
        pair_stage,
        pair_stages,
        parameters_up_to,
        registering,
        soft_target_kl,
    )
    from kdzoo.engine.deployed import load_student
    from kdzoo.engine.objective import Objective
    from kdzoo.library import distill, get_method, list_methods, method_config


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (PEP 562)."""
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'kdzoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value  # later uses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_SOURCES})


def _started_as_cli() -> bool:
    """Whether this process is the ``kdzoo`` command (its console script, or ``python -m kdzoo``)."""
    if Path(sys.argv[0] if sys.argv else "").name in ("kdzoo", "kdzoo.exe", "kdzoo-script.py"):
        return True
    args, modules = getattr(sys, "orig_argv", []), ("kdzoo", "kdzoo.cli", "kdzoo.__main__")
    return any(a == "-m" and b in modules for a, b in zip(args, args[1:], strict=False))


def _load_plugins() -> None:
    """Load the installed plugins now, so models they register exist for ``timm.create_model``."""
    for name in _SOURCES:  # everything behind the public names, as a plain ``import`` would
        __getattr__(name)
    from kdzoo.registry import registry

    registry()


if not _started_as_cli():
    _load_plugins()
