"""The run configuration: YAML files + ``--set`` overrides -> typed dataclasses.

Layout of a config file::

    methods: [fitnets]          # or --method on the command line
    teacher: {model: resnet18, train: {epochs: 8}}
    student: {model: mobilenetv3_small_050}
    data:    {name: digits, img_size: 32, batch_size: 64}
    optim:   {name: sgd, lr: 0.05, scheduler: cosine}
    train:   {epochs: 12, seed: 0}
    fitnets: {schedule: joint}  # one section per method, typed by the method's own config class

The core sections are fixed; a method's section belongs to the method (so a new method never edits
this file). ``--set key=value`` takes a dotted key; a bare key that is not a core section is looked
up in the selected methods' configs (``--set schedule=two_stage``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from kdzoo.config.checks import MAX_TEXT, clip, shown
from kdzoo.config.schema import CORE_SECTIONS, RunConfig, TeacherConfig
from kdzoo.config.typed import build
from kdzoo.config.yamlio import load_yaml, read_text
from kdzoo.errors import KdzooError, close_matches, first_line, unknown_method


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = load_yaml(read_text(path), f"config file {path}")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or first_line(exc)
        raise KdzooError(f"config file {path} is not valid YAML{where}: {clip(problem)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KdzooError(f"config file {path} must hold a mapping at the top level")
    return data


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


MAX_KEY_PARTS = 16  # section.key plus a model kwarg's nesting (bounded at 8 levels) fits with room


def parse_override(text: str, option: str = "--set", example: str = "optim.lr=0.1") -> tuple[list[str], Any]:
    """``'optim.lr=0.1'`` -> (['optim', 'lr'], 0.1); the value is read as YAML. ``option`` and
    ``example`` name the command-line option in the error."""
    if len(text) > MAX_TEXT:
        raise KdzooError(f"{option} {shown(text)}: longer than {MAX_TEXT} characters; a setting is a short value")
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise KdzooError(f"{option} {shown(text)}: expected KEY=VALUE, e.g. {option} {example}")
    if key.count(".") >= MAX_KEY_PARTS:
        raise KdzooError(f"{option} {clip(key)}: a key of more than {MAX_KEY_PARTS} dotted parts")
    try:
        value = load_yaml(raw, f"{option} {clip(key)}") if raw.strip() else ""
    except yaml.YAMLError:  # not YAML: the text as it is (a name with a colon, say)
        value = raw
    return key.split("."), value


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _qualify(path: list[str], methods: list[str], method_fields: dict[str, set[str]], known: Mapping) -> list[str]:
    """Route a bare ``--set schedule=...`` to the one selected method whose config has it."""
    if path[0] in CORE_SECTIONS or path[0] in known or path[0] in ("methods", "teachers"):
        return path
    owners = [m for m in methods if path[0] in method_fields.get(m, set())]
    if len(owners) == 1:
        return [owners[0], *path]
    if len(owners) > 1:
        raise KdzooError(
            f"--set {clip('.'.join(path))}: ambiguous, methods {', '.join(owners)} all have it; "
            f"write e.g. --set {owners[0]}.{clip('.'.join(path))}=..."
        )
    choices = [*CORE_SECTIONS, *known, *(f for m in methods for f in method_fields.get(m, ()))]
    raise KdzooError(f"unknown config key '{clip('.'.join(path))}'{close_matches(path[0], choices)}")


def load_config(
    files: Sequence[str | Path],
    overrides: list[str],
    methods: list[str],
    method_config_classes: dict[str, type],
    failures: dict[str, str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Build a :class:`RunConfig` from YAML ``files`` (merged in order), ``--set`` overrides and
    the ``--method`` names; ``method_config_classes`` maps every known method to its config class.
    ``base`` (a :meth:`RunConfig.to_dict`) is what the files and overrides apply to."""
    data: dict[str, Any] = copy.deepcopy(base or {})
    for path in files:
        data = merge(data, read_yaml(path))
    data.pop("method_sources", None)  # what a run's config.json records about itself, not a setting
    selected = list(methods) or data.get("methods") or []
    # only for routing bare --set keys; a malformed 'methods' value is reported below, by key
    selected = [selected] if isinstance(selected, str) else selected if isinstance(selected, list) else []
    method_fields = {name: {f.name for f in dataclasses.fields(cls)} for name, cls in method_config_classes.items()}
    for name in selected:  # a qualified name (DISTRIBUTION:METHOD) answers by lookup, not by iteration
        if isinstance(name, str) and name not in method_fields and name in method_config_classes:
            with contextlib.suppress(KdzooError):  # a clashing name: the clash is said where it is selected
                method_fields[name] = {f.name for f in dataclasses.fields(method_config_classes[name])}
    for text in overrides:
        path, value = parse_override(text)
        # the mapping itself answers `in` for qualified names too (a set of its keys would not)
        _set_path(data, _qualify(path, selected, method_fields, method_config_classes), value)
    if methods:
        data["methods"] = list(methods)
    selected = data.pop("methods", None) or []
    if isinstance(selected, str):
        selected = [selected]
    if not isinstance(selected, list) or not all(isinstance(m, str) for m in selected):
        raise KdzooError(f"config key 'methods': expected a list of method names, got {shown(selected)}")
    if not selected:
        raise KdzooError(
            "no method selected: pass --method NAME (known: " + ", ".join(sorted(method_config_classes)) + ")"
        )
    for name in selected:
        if name not in method_config_classes:
            raise unknown_method(clip(name, 60), method_config_classes, failures)
    if len(set(selected)) != len(selected):
        raise KdzooError(f"method selected twice: {shown(selected)}")
    _refuse_renamed_keys(data)
    recipe = data.pop("recipe", None)
    if recipe is not None and not isinstance(recipe, str):
        raise KdzooError(f"config key 'recipe': expected text naming the recipe and its source, got {shown(recipe)}")
    given_teacher = "teacher" in data
    core = {key: build(cls, data.pop(key, None), key) for key, cls in CORE_SECTIONS.items()}
    teachers = _teachers(data.pop("teachers", None))
    if teachers and given_teacher:
        raise KdzooError(
            "config keys 'teacher' and 'teachers' are both given: list every teacher under teachers: "
            "(teacher: is the one-teacher form)"
        )
    method_configs = {}
    for key, section in data.items():
        if key not in method_config_classes:
            choices = [*CORE_SECTIONS, "teachers", "methods", "recipe", *method_config_classes]
            raise KdzooError(
                f"unknown config key '{clip(str(key))}'{close_matches(str(key), choices)}; "
                f"top-level keys: {', '.join(choices)}"
            )
        cfg = build(method_config_classes[key], section, key)
        if key in selected:
            method_configs[key] = cfg
    for name in selected:
        method_configs.setdefault(name, build(method_config_classes[name], {}, name))
    return RunConfig(methods=selected, method_configs=method_configs, recipe=recipe, **_with_teachers(core, teachers))


def _teachers(raw: Any) -> list[TeacherConfig]:
    """``teachers:``, each a teacher section."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise KdzooError(f"config key 'teachers': expected a list of teacher sections, got {shown(raw)}")
    teachers = [build(TeacherConfig, item, f"teachers[{i}]") for i, item in enumerate(raw)]
    if len(teachers) == 1:
        raise KdzooError("config key 'teachers': one teacher is the teacher: section; list two or more here")
    return teachers


def _with_teachers(core: dict[str, Any], teachers: list[TeacherConfig]) -> dict[str, Any]:
    """The core sections with ``teachers``; ``teacher`` is then the first of them, whose settings the
    ensemble's inputs and its output cache follow."""
    return {**core, "teachers": teachers, "teacher": teachers[0]} if teachers else core


RENAMED_KEYS = {("teacher", "train_epochs"): "teacher.train.epochs"}


def _refuse_renamed_keys(data: dict[str, Any]) -> None:
    for (section, key), now in RENAMED_KEYS.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            raise KdzooError(f"config key '{section}.{key}' is now '{now}'; rename it in your config or --set")


def config_from_dict(data: dict[str, Any], method_config_classes: dict[str, type]) -> RunConfig:
    """Rebuild a :class:`RunConfig` saved with :meth:`RunConfig.to_dict` (e.g. in a checkpoint)."""
    methods = data.get("methods") if isinstance(data, dict) else None
    # an empty list is a run without methods: a comparison's scratch run, a teacher kdzoo trained
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        raise KdzooError(f"a saved config must hold a mapping with a list of 'methods', got {shown(data)}")
    data = copy.deepcopy(data)
    data.pop("methods")
    overrides_free = {k: v for k, v in data.items() if k in CORE_SECTIONS or k in methods}
    core = {key: build(cls, overrides_free.get(key), key) for key, cls in CORE_SECTIONS.items()}
    core = _with_teachers(core, _teachers(data.get("teachers")))
    method_configs = {}
    for name in methods:
        if name not in method_config_classes:
            raise KdzooError(f"this checkpoint was made with method '{clip(name)}', which is not installed here")
        method_configs[name] = build(method_config_classes[name], overrides_free.get(name), name)
    recipe = data.get("recipe") if isinstance(data.get("recipe"), str) else None
    return RunConfig(methods=methods, method_configs=method_configs, recipe=recipe, **core)
