"""The one exception type kdzoo raises for things a user can fix.

The CLI prints a :class:`KdzooError` as a single line and exits non-zero; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KdzooError(Exception):
    """A problem with the user's input (config, models, data, files), stated in one line."""


def close_matches(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' when something close exists, else ''."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{found[0]}'?)" if found else ""
