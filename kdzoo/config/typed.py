"""Turn plain dictionaries (from YAML or ``--set``) into typed dataclasses, and back.

Every failure is a :class:`~kdzoo.errors.KdzooError` naming the dotted key, so a user sees
``config key 'optim.lr': expected a number, got 'fast'`` instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, Union

from kdzoo.config.checks import MAX_ITEMS, check_finite, check_nested, check_scalar, clip, shown
from kdzoo.errors import KdzooError, close_matches

T = TypeVar("T")


def build(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from mapping ``data``; unknown keys and wrong types are errors.

    Every value is bounded (see :mod:`kdzoo.config.checks`: string lengths, list lengths, nesting,
    int64 ints, finite floats) and the class's own ``validate(where)``, if it has one, checks ranges.
    An instance of ``cls`` passes as it is, through its ``validate`` too."""
    if data is None:
        data = {}
    if isinstance(data, cls):
        _validate(data, where)
        return data
    if not isinstance(data, dict):
        raise KdzooError(f"config key '{where or '.'}': expected a mapping, got {shown(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise KdzooError(
                f"unknown config key '{clip(path)}'{close_matches(str(key), fields)}; "
                f"known keys here: {', '.join(sorted(fields))}"
            )
        values[key] = _coerce(hints[key], value, path)
    try:
        obj = cls(**values)
    except TypeError as exc:  # a required field was not given
        raise KdzooError(f"config section '{where or '.'}': {clip(str(exc))}") from None
    _validate(obj, where)
    return obj


def _validate(obj: Any, where: str) -> None:
    """The config class's own range checks: ``validate(where)`` raising a KdzooError, if it has one."""
    check = getattr(obj, "validate", None)
    if callable(check):
        check(where)


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
        check_nested(value, path)
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
        raise KdzooError(errors[0] if len(errors) == 1 else f"config key '{clip(path)}': bad value {shown(value)}")
    if origin is typing.Literal:
        if value in args:
            return value
        choices = ", ".join(repr(a) for a in args)
        raise KdzooError(f"config key '{clip(path)}': {shown(value)} is not one of {choices}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise KdzooError(f"config key '{clip(path)}': expected a list, got {shown(value)}")
        _check_length(value, path)
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise KdzooError(f"config key '{clip(path)}': expected a mapping, got {shown(value)}")
        _check_length(value, path)
        check_nested(value, path)  # bounded before anything walks it: it may share (alias) its parts
        key_type, value_type = args if args else (Any, Any)
        items = value.items()
        return {_coerce(key_type, k, f"{path} (a key)"): _coerce(value_type, v, f"{path}.{k}") for k, v in items}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise KdzooError(f"config key '{clip(path)}': expected true or false, got {shown(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            check_scalar(value, path)
            return value
        raise KdzooError(f"config key '{clip(path)}': expected an integer, got {shown(value)}")
    if tp is float:
        return _float(value, path)
    if tp is str:
        if isinstance(value, str):
            check_scalar(value, path)
            return value
        raise KdzooError(f"config key '{clip(path)}': expected a string, got {shown(value)}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise KdzooError(f"config key '{clip(path)}': expected {_describe(tp)}, got {shown(value)}")
    return value


def _check_length(value: list[Any] | tuple[Any, ...] | dict[Any, Any], path: str) -> None:
    if len(value) > MAX_ITEMS:
        raise KdzooError(f"config key '{clip(path)}': {len(value)} entries (at most {MAX_ITEMS})")


def _float(value: Any, path: str) -> float:
    """A finite float: NaN and inf are never a setting (a NaN learning rate trains nothing, silently)."""
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and len(value) <= 100:  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None:
        raise KdzooError(f"config key '{clip(path)}': expected a number, got {shown(value)}")
    try:
        number = float(number)
    except OverflowError:  # an int beyond float's range
        raise KdzooError(f"config key '{clip(path)}': {shown(value)} is out of a float's range") from None
    check_finite(number, path)
    return number
