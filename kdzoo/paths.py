"""Where kdzoo keeps things between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$KDZOO_CACHE``, else ``$XDG_CACHE_HOME/kdzoo``, else ``~/.cache/kdzoo``."""
    if os.environ.get("KDZOO_CACHE"):
        return Path(os.environ["KDZOO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kdzoo"
