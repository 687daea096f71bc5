"""Building teacher and student with timm: local checkpoints, or pretrained weights (cached or downloaded)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import timm
from torch import nn

from kdzoo import checkpoint
from kdzoo.config.checks import clip, shown
from kdzoo.config.schema import ModelConfig, RunConfig
from kdzoo.errors import KdzooError, close_matches, first_line
from kdzoo.models.pretrained import cached_pretrained_file, check_fetchable, download_failure, hub_cache, split_source

# what timm raises for arguments a model does not take, and for a kwargs.checkpoint_path it cannot load
_TIMM_ERRORS = (
    TypeError,
    ValueError,
    RuntimeError,
    AssertionError,
    KeyError,
    OSError,
    EOFError,
    pickle.UnpicklingError,
)


def check_model_name(name: str, role: str) -> None:
    if split_source(name)[0] is not None:  # hf-hub: / local-dir: name their architecture in their config.json
        return
    if not timm.is_model(name.split(".")[0]):
        hint = close_matches(name, timm.list_models()) if len(name) <= 100 else ""  # difflib is quadratic
        raise KdzooError(f"{role} model '{clip(name)}' is not a timm model{hint}")


def create_model(cfg: ModelConfig, role: str, num_classes: int, in_chans: int) -> nn.Module:
    """``timm.create_model`` for ``cfg``; sized for the data unless ``cfg.kwargs`` says otherwise.

    Pretrained weights (a timm name with its tag, ``hf-hub:``, ``local-dir:``) are read from the local
    cache when there, else downloaded by timm (:mod:`kdzoo.models.pretrained`: offline, or when the
    download fails, one line saying what to do).
    """
    check_model_name(cfg.model, role)
    _check_checkpoint_path(cfg.kwargs, role)
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, **cfg.kwargs}
    pretrained = cfg.pretrained and not cfg.checkpoint
    if pretrained:
        check_fetchable(cfg.model, role)
        local = cached_pretrained_file(cfg.model)
        if local is not None and split_source(cfg.model)[0] is None:
            kwargs["pretrained_cfg_overlay"] = {"file": str(local)}  # timm reads it without asking the hub
        else:  # the cache HF_HUB_CACHE names now (huggingface_hub reads it once, when imported)
            kwargs["cache_dir"] = hub_cache()
    try:
        model = timm.create_model(cfg.model, pretrained=pretrained, **kwargs)
    except _TIMM_ERRORS as exc:
        failed = download_failure(cfg.model, role, exc) if pretrained else None
        if failed is not None:
            raise failed from None
        problem = f"{type(exc).__name__}: {clip(first_line(exc), 300)}"
        raise KdzooError(f"cannot build {role} '{cfg.model}' with {shown(kwargs)}: {problem}") from None
    if cfg.checkpoint:
        load_weights(model, cfg.checkpoint, f"{role} '{cfg.model}'")
    return model


def _check_checkpoint_path(kwargs: dict[str, Any], role: str) -> None:
    """timm loads ``kwargs.checkpoint_path`` after building the model; a missing file would surface as a bare
    FileNotFoundError from deep inside timm, so say it here, with kdzoo's own checked alternative."""
    path = kwargs.get("checkpoint_path")
    if path is None:
        return
    if not isinstance(path, str) or not Path(path).is_file():
        raise KdzooError(
            f"{role}.kwargs.checkpoint_path: file not found: {shown(path)}; give an existing weights file "
            f"(or {role}.checkpoint=FILE, which kdzoo loads and checks against the architecture)"
        )


def classifier_classes(state: dict[str, Any], model: nn.Module) -> int | None:
    """How many classes the classifier weights in ``state`` predict (None if not found)."""
    key = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    weight = state.get(f"{key}.weight") if key else None
    return int(weight.shape[0]) if weight is not None and weight.ndim >= 1 else None


def load_weights(model: nn.Module, path: str | Path, what: str) -> None:
    state = checkpoint.model_state(checkpoint.load(path))
    classes = classifier_classes(state, model)
    if classes is not None and classes != getattr(model, "num_classes", classes):
        raise KdzooError(
            f"{what}: checkpoint {path} predicts {classes} classes but the run has {model.num_classes}; "
            f"teacher and student must share the label set"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise KdzooError(f"{what}: checkpoint {path} does not fit this architecture ({first[:200]})") from None


def check_label_sets(config: RunConfig, data_classes: int) -> None:
    """Teacher and student must predict the same classes; say so before anything is built."""
    t = config.teacher.kwargs.get("num_classes", data_classes)
    s = config.student.kwargs.get("num_classes", data_classes)
    _same_classes(config.teacher.model, t, config.student.model, s)


def check_pair(teacher: nn.Module | None, student: nn.Module, t_name: str, s_name: str) -> None:
    """Fail before training when teacher and student cannot be distilled into each other."""
    if teacher is not None:
        _same_classes(t_name, getattr(teacher, "num_classes", None), s_name, getattr(student, "num_classes", None))


def _same_classes(t_name: str, t_classes: int | None, s_name: str, s_classes: int | None) -> None:
    if t_classes != s_classes:
        raise KdzooError(
            f"teacher {t_name} predicts {shown(t_classes)} classes but student {s_name} predicts {shown(s_classes)}; "
            f"they must share the label set (check teacher/student kwargs.num_classes)"
        )
