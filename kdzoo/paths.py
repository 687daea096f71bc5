"""Where kdzoo keeps things between runs."""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from pathlib import Path

_override: contextvars.ContextVar[Path | None] = contextvars.ContextVar("kdzoo_cache", default=None)


def cache_dir() -> Path:
    """``$KDZOO_CACHE``, else ``$XDG_CACHE_HOME/kdzoo``, else ``~/.cache/kdzoo`` (inside
    :func:`using_cache`, its folder)."""
    if _override.get() is not None:
        return _override.get()
    if os.environ.get("KDZOO_CACHE"):
        return Path(os.environ["KDZOO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kdzoo"


@contextlib.contextmanager
def using_cache(folder: str | Path) -> Iterator[Path]:
    """Use ``folder`` as kdzoo's cache inside the block (this thread only), leaving the
    environment and the user's own cache untouched."""
    token = _override.set(Path(folder))
    try:
        yield Path(folder)
    finally:
        _override.reset(token)
