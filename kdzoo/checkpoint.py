"""Checkpoint files: written atomically, read with one-line errors, with every RNG state."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdzoo.errors import KdzooError


def save_atomic(obj: Any, path: str | Path) -> None:
    """Write to a temp file, fsync, then rename: a kill mid-write never leaves a broken ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise KdzooError(
            f"could not write checkpoint {path} ({exc.strerror or exc}); the previous checkpoint is intact"
        ) from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KdzooError(f"checkpoint file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise KdzooError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}); is it a kdzoo/torch file?"
        ) from None
    if not isinstance(data, dict):
        raise KdzooError(f"checkpoint {path} does not hold a state dict")
    return data


def model_state(data: dict[str, Any]) -> dict[str, Any]:
    """The model weights in a kdzoo checkpoint or in a plain state-dict file."""
    for key in ("student", "model", "state_dict"):
        if isinstance(data.get(key), dict):
            return data[key]
    return data


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
