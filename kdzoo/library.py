"""``import kdzoo`` entry points: a method as a loss module for your own loop, or the whole engine."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from kdzoo.api import KdzooError, MethodInfo, TrainingSet
from kdzoo.config import build
from kdzoo.engine.extract import device_of, model_name
from kdzoo.engine.objective import Objective, build_objective
from kdzoo.registry import registry


def list_methods() -> dict[str, MethodInfo]:
    """Every installed method (built-in and third-party), by name."""
    return dict(registry().methods)


def method_config(name: str, **config: Any) -> Any:
    """Method ``name``'s typed config: its defaults, overridden by ``config``."""
    info = registry().get(name)
    return build(info.config_class, config, name)


def _input_size(model: nn.Module, img_size: int | None) -> int:
    if img_size:
        return img_size
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224)
    return int(size[-1])


def get_method(
    name: str | Sequence[str],
    *,
    student: nn.Module,
    teacher: nn.Module | None = None,
    img_size: int | None = None,
    train_set: TrainingSet | None = None,
    **config: Any,
) -> Objective:
    """Method ``name`` (or a list of methods, stacked as ``kdzoo run`` stacks them) as an
    ``nn.Module`` loss for your own training loop.

    ``loss = objective(images, labels)`` runs the student (and the frozen teacher) once, with the
    taps the methods need, and returns CE plus the methods' weighted terms. Put
    ``objective.parameters()`` (the methods' own trainable modules, e.g. FitNets' regressor) in
    your optimizer next to the student's. ``config`` overrides one method's defaults; with several
    methods, pass ``{method: {key: value}}`` per method. Methods that keep state per training sample
    (CRD's memory bank) need ``train_set=kdzoo.TrainingSet(num_samples, labels)`` here and each
    batch's ``indices`` in the call: ``objective(images, labels, indices=idx)``.

    >>> kd = kdzoo.get_method("kd", teacher=teacher, student=student, temperature=2)  # doctest: +SKIP
    >>> stack = kdzoo.get_method(["kd", "at"], teacher=teacher, student=student)      # doctest: +SKIP
    >>> loss = kd(images, labels)                                                        # doctest: +SKIP
    """
    names = [name] if isinstance(name, str) else list(name)
    if not names or len(set(names)) != len(names):
        raise KdzooError(f"get_method: name one or more different methods, got {names}")
    reg = registry()
    infos = [reg.get(n) for n in names]
    settings = {names[0]: config} if len(names) == 1 else config
    unknown = set(settings) - set(names)
    if unknown:
        raise KdzooError(f"get_method: settings for {sorted(unknown)}, which are not among the methods {names}")
    configs = {info.name: build(info.config_class, settings.get(info.name, {}), info.name) for info in infos}
    wanting = [info.name for info in infos if info.wants_teacher(configs[info.name])]
    if wanting and teacher is None:
        raise KdzooError(f"method '{wanting[0]}' needs a teacher: get_method({name!r}, teacher=..., student=...)")
    device = device_of(student, "student")
    methods = {info.name: info.factory(configs[info.name]) for info in infos}
    if train_set is not None and train_set.device != device:
        train_set = dataclasses.replace(train_set, device=device)
    objective = build_objective(
        methods,
        student,
        teacher if wanting else None,
        _input_size(student, img_size),
        train_set=train_set,
        infos={info.name: info.for_config(configs[info.name]) for info in infos},
    )
    return objective.to(device)


def distill(
    teacher: nn.Module | None,
    student: nn.Module,
    train_data: Iterable,
    val_data: Iterable,
    methods: Sequence[str] = ("kd",),
    *,
    run_dir: str | Path = "runs/distill",
    config: str | Path | None = None,
    settings: Sequence[str] = (),
    show_progress: bool | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``student`` from ``teacher`` with ``methods`` through kdzoo's engine; returns the summary.

    ``train_data`` / ``val_data``: DataLoaders (or sized iterables) of ``(images, labels)``; training
    batches of ``(images, labels, sample_indices)`` serve methods that keep per-sample state (CRD).
    ``config``: an optional YAML file; ``settings``: ``--set`` style overrides such as
    ``["train.epochs=5", "optim.lr=0.01", "kd.temperature=2"]``. Checkpoints, metrics and the summary
    go to ``run_dir`` as for ``kdzoo run``; a ``run_dir`` that already holds a run is refused unless
    ``resume=True``, which continues it from its last checkpoint (more ``train.epochs`` extend it).
    """
    from kdzoo.config import load_config
    from kdzoo.data import DataBundle, IterableBatches
    from kdzoo.engine import build_trainer

    reg = registry()
    if teacher is None and any(reg.get(m).wants_teacher(method_config(m)) for m in methods):
        raise KdzooError(f"methods {list(methods)} need a teacher: distill(teacher, student, ...)")
    first_images = next(iter(train_data))[0]
    names = [f"student.model={model_name(student)}", f"data.img_size={first_images.shape[-1]}", "data.name=custom"]
    if teacher is not None:
        names.append(f"teacher.model={model_name(teacher)}")
    cfg = load_config([config] if config else [], [*names, *settings], list(methods), reg.config_classes())
    num_classes = int(getattr(student, "num_classes", 0) or 0)
    data = DataBundle(
        "custom", IterableBatches(train_data), IterableBatches(val_data), num_classes, int(first_images.shape[1])
    )
    trainer = build_trainer(cfg, reg, run_dir, teacher=teacher, student=student, data=data, show_progress=show_progress)
    last = Path(run_dir) / "last.pt"
    state = None
    if resume and last.is_file():
        from kdzoo.engine.resume import check_compatible, read_run

        state, saved = read_run(last, reg)
        check_compatible(saved, cfg, Path(run_dir))  # a resumed run keeps its config
    return trainer.fit(resume=state)
