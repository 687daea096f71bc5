"""Turn plain dictionaries (from YAML or ``--set``) into typed dataclasses, and back.

Every failure is a :class:`~kdzoo.errors.KdzooError` naming the dotted key, so a user sees
``config key 'optim.lr': expected a number, got 'fast'`` instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, Union

from kdzoo.errors import KdzooError, close_matches

T = TypeVar("T")


def build(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from mapping ``data``; unknown keys and wrong types are errors."""
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise KdzooError(f"config key '{where or '.'}': expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise KdzooError(
                f"unknown config key '{path}'{close_matches(str(key), fields)}; "
                f"known keys here: {', '.join(sorted(fields))}"
            )
        values[key] = _coerce(hints[key], value, path)
    try:
        obj = cls(**values)
    except TypeError as exc:  # a required field was not given
        raise KdzooError(f"config section '{where or '.'}': {exc}") from None
    check = getattr(obj, "validate", None)
    if callable(check):
        check(where)
    return obj


def as_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts/lists (for YAML, JSON, checkpoints)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [as_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    return obj


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, path)
            except KdzooError as exc:
                errors.append(str(exc))
        raise KdzooError(errors[0] if len(errors) == 1 else f"config key '{path}': bad value {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        choices = ", ".join(repr(a) for a in args)
        raise KdzooError(f"config key '{path}': {value!r} is not one of {choices}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise KdzooError(f"config key '{path}': expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise KdzooError(f"config key '{path}': expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise KdzooError(f"config key '{path}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise KdzooError(f"config key '{path}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise KdzooError(f"config key '{path}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise KdzooError(f"config key '{path}': expected a string, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise KdzooError(f"config key '{path}': expected {_describe(tp)}, got {value!r}")
    return value
