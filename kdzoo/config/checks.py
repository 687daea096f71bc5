"""Bounds and range checks for config values, and values shown short in error messages.

A config value is a setting: a number, a name, a path, a short list, a few model arguments. Anything
far larger is a mistake or an attack (a 379-byte YAML alias bomb expands to gigabytes once printed),
so sizes are bounded where values are read, and every value an error message shows is cut short.

The range helpers (:func:`positive`, :func:`non_negative`, :func:`at_least`, :func:`between`) are
what a config class's ``validate(self, where)`` calls; each names the dotted key in its error::

    def validate(self, where: str) -> None:
        positive(self, where, "temperature")
        non_negative(self, where, "weight", "ce_weight")
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable
from typing import Any

from kdzoo.errors import KdzooError

MAX_TEXT = 4096  # characters in one string: PATH_MAX on Linux, far above any name or path a setting holds
MAX_ITEMS = 1000  # entries in one list or mapping
MAX_NODES = 1000  # values nested inside one free-form value (model kwargs), keys included
MAX_DEPTH = 8  # levels of nesting inside one free-form value
MAX_INT_BITS = 63  # an int setting is a count, a size, an index or a seed: it fits an int64
MAX_SHOWN = 120  # characters of a value an error message shows


class _Short(reprlib.Repr):
    """``repr`` that stops early: a few items per level, a few levels, short strings."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 6
        self.maxstring = self.maxother = 60
        self.maxlong = 40

    def repr_int(self, x: int, level: int) -> str:
        # repr() of an int over 4300 digits raises ValueError: describe it instead
        if x.bit_length() > 256:
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_SHORT = _Short()


def clip(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` on one line, at most ``limit`` characters (an ellipsis says it was cut)."""
    raw = str(text)
    text = " ".join(raw[: limit * 2].split())  # cut first: the text may be huge
    return text if len(text) <= limit and len(raw) <= limit * 2 else text[: limit - 1] + "…"


def shown(value: Any) -> str:
    """``repr(value)`` bounded in size, for error messages: never expands a huge or shared structure."""
    try:
        return clip(_SHORT.repr(value))
    except Exception:  # a third-party object whose __repr__ fails must not hide the error being reported
        return f"<{type(value).__name__}>"


def check_nested(value: Any, path: str) -> None:
    """Refuse a free-form value (e.g. ``student.kwargs``) with more than :data:`MAX_NODES` values or
    more than :data:`MAX_DEPTH` levels; a structure that contains itself ends at the depth bound.
    The walk stops at the first bound passed, so a shared (aliased) structure costs no more."""
    count = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise KdzooError(f"config key '{clip(path)}': holds more than {MAX_NODES} values; a setting holds a few")
        if isinstance(item, (dict, list, tuple)):
            if depth >= MAX_DEPTH:
                raise KdzooError(
                    f"config key '{clip(path)}': nested more than {MAX_DEPTH} levels deep (or contains itself)"
                )
            children = [x for pair in item.items() for x in pair] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        else:
            check_scalar(item, path)


def check_scalar(value: Any, path: str) -> None:
    """Bound one plain value: strings by length (and no NUL, which no path or name can hold), ints to int64."""
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise KdzooError(f"config key '{clip(path)}': a string of {len(value)} characters (at most {MAX_TEXT})")
        if "\x00" in value:
            raise KdzooError(f"config key '{clip(path)}': contains a NUL character, got {shown(value)}")
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise KdzooError(f"config key '{clip(path)}': {shown(value)} does not fit a 64-bit integer")


def check_finite(value: float, path: str) -> None:
    if not math.isfinite(value):
        raise KdzooError(f"config key '{clip(path)}': must be a finite number, got {value}")


# ---------------------------------------------------------------------------------- range helpers
def _require(config: object, where: str, names: tuple[str, ...], ok: Callable[[Any], bool], rule: str) -> None:
    for name in names:
        value = getattr(config, name)
        items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
        for index, item in items:
            if item is not None and not ok(item):
                key = f"{where}.{name}" + ("" if index is None else f"[{index}]")
                raise KdzooError(f"config key '{clip(key)}': must be {rule}, got {shown(item)}")


def positive(config: object, where: str, *names: str) -> None:
    """Each named field (or each item of a list field) is > 0; None passes (an optional setting unset)."""
    _require(config, where, names, lambda v: v > 0, "> 0")


def non_negative(config: object, where: str, *names: str) -> None:
    """Each named field is >= 0: loss weights (0 switches a term off; a negative one maximises it)."""
    _require(config, where, names, lambda v: v >= 0, ">= 0")


def at_least(config: object, where: str, low: float, *names: str) -> None:
    _require(config, where, names, lambda v: v >= low, f">= {low}")


def between(config: object, where: str, low: float, high: float, *names: str) -> None:
    """Each named field is in the closed interval [low, high] (a share, a ratio, a probability)."""
    _require(config, where, names, lambda v: low <= v <= high, f"in [{low}, {high}]")
