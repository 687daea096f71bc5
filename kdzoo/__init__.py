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
``parameters_up_to``, ``linear_warmup``, ``soft_target_kl``, ``KdzooError``.
"""

from __future__ import annotations

from kdzoo.api import (
    INPUT_VIEW,
    WHOLE_RUN,
    KdzooError,
    MethodInfo,
    ModelInfo,
    Outputs,
    Run,
    Stage,
    StageInfo,
    Summary,
    Taps,
    TrainingSet,
    View,
    hookimpl,
    inner_stages,
    linear_warmup,
    pair_inner_stages,
    pair_stage,
    pair_stages,
    parameters_up_to,
    soft_target_kl,
)
from kdzoo.engine.deployed import load_student
from kdzoo.engine.objective import Objective
from kdzoo.library import distill, get_method, list_methods, method_config

__version__ = "0.1.0"

__all__ = [
    "INPUT_VIEW",
    "WHOLE_RUN",
    "KdzooError",
    "MethodInfo",
    "ModelInfo",
    "Objective",
    "Outputs",
    "Run",
    "Stage",
    "StageInfo",
    "Summary",
    "Taps",
    "TrainingSet",
    "View",
    "distill",
    "get_method",
    "hookimpl",
    "inner_stages",
    "linear_warmup",
    "list_methods",
    "load_student",
    "method_config",
    "pair_inner_stages",
    "pair_stage",
    "pair_stages",
    "parameters_up_to",
    "soft_target_kl",
]


def _load_plugins() -> None:
    """Load the installed plugins now, so models they register exist for ``timm.create_model``."""
    from kdzoo.registry import registry

    registry()


_load_plugins()
