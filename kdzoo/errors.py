"""One-line errors: :class:`KdzooError` (defined with the plugin API) and the suggestion helper.

The CLI prints a :class:`KdzooError` as a single line and exits non-zero; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from kdzoo.api import KdzooError

__all__ = ["KdzooError", "RunBusy", "RunStopped", "close_matches", "error_line", "first_line", "unknown_method"]


class RunStopped(KdzooError):
    """A run stopped on request (SIGTERM, SIGINT) after writing its checkpoint: to be resumed, not a
    failure of the run."""


class RunBusy(KdzooError):
    """Another process holds the run directory: nothing is wrong with the run, it is just not ours."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message: what a one-line report says about it."""
    return (str(exc).strip().splitlines() or [""])[0]


def error_line(exc: BaseException) -> str:
    """A one-line report of any exception: kdzoo's own say what is wrong already; any other is named by
    its type, since its message alone may not say what kind of failure it was."""
    return first_line(exc) if isinstance(exc, KdzooError) else f"{type(exc).__name__}: {first_line(exc)}"


def close_matches(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' when something close exists, else ''."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{found[0]}'?)" if found else ""


def unknown_method(name: str, known: Iterable[str], failures: dict[str, str] | None = None) -> KdzooError:
    """The error for a method name that is not installed, or whose plugin failed to load."""
    if failures and name in failures:
        return KdzooError(f"method plugin '{name}' failed to load: {failures[name]}")
    known = sorted(known)
    return KdzooError(
        f"unknown method '{name}'{close_matches(name, known)}; "
        f"known methods: {', '.join(known) or 'none'} (see `kdzoo list`)"
    )
