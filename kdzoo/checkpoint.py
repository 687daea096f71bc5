"""Checkpoint files: written atomically, read without ever running code from them.

Every file kdzoo reads (run checkpoints, teacher weights, the trained-teacher cache) goes through
:func:`load`, which uses ``torch.load(weights_only=True)``: tensors and plain containers only. A
pickle that needs any other global (a ``__reduce__`` payload, a class from someone's code) is
refused in one line naming the file and the global, before anything in it runs. ``.safetensors``
files hold tensors only and are read with safetensors. kdzoo writes nothing else: RNG states are
stored as tensors and plain lists.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from kdzoo.errors import KdzooError, first_line


def _replace_atomically(path: Path, write: Callable[[BinaryIO], object], size: int | None = None) -> None:
    """Write to a temp file beside ``path``, fsync, then rename: a kill mid-write never leaves a broken
    ``path``, only the previous one (or none). ``size`` (bytes, when known) is checked against the free
    space first; a full disk is one line naming the path and the bytes needed, never a traceback."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if size is not None:
            check_free_space(path, size)
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _sync_folder(path.parent)  # the rename itself survives a power cut
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise KdzooError(disk_full(path, size, previous=path.exists())) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform or file system without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_free_space(path: Path, size: int) -> None:
    """A one-line error before writing ``size`` bytes to ``path`` on a disk without room for them."""
    folder = path.parent if path.parent.exists() else Path(path.anchor or ".")
    free = shutil.disk_usage(folder).free
    if size > free:
        raise KdzooError(disk_full(path, size, previous=path.exists(), free=free))


def disk_full(path: Path, size: int | None, previous: bool, free: int | None = None) -> str:
    """What to say when ``path`` could not be written for lack of space."""
    needed = f"{size:,} bytes" if size is not None else "more space"
    room = f", {free:,} are free" if free is not None else ""
    kept = "the previous file is intact" if previous else "nothing was written"
    return f"no space left for {path}: it needs {needed}{room}; {kept}; free some space and retry"


def write_text_atomic(text: str, path: Path) -> None:
    """``path`` holds all of ``text`` or its previous content, never a part (a run's summary.json, which
    marks the run finished)."""
    write_bytes_atomic(text.encode(), path)


def write_bytes_atomic(payload: bytes, path: Path) -> None:
    """``path`` holds all of ``payload`` or its previous content, never a part."""
    _replace_atomically(path, lambda fh: fh.write(payload), size=len(payload))


def save_atomic(obj: Any, path: str | Path) -> None:
    """``obj`` saved by ``torch.save`` into ``path``, atomically (see :func:`_replace_atomically`)."""
    path = Path(path)
    size = tensor_bytes(obj)
    try:
        _replace_atomically(path, lambda fh: torch.save(obj, fh), size=size)
    except KdzooError:
        raise
    # torch.save reports a failed write (a full disk) as RuntimeError, the file system as OSError
    except (OSError, RuntimeError) as exc:
        if shutil.disk_usage(path.parent).free < size:
            raise KdzooError(disk_full(path, size, previous=path.exists())) from None
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
        kept = "the previous checkpoint is intact" if path.exists() else "no checkpoint was written"
        raise KdzooError(f"could not write checkpoint {path} ({reason}); {kept}") from None


def tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor in ``obj`` (nested dicts, lists and tuples): about what it takes on disk."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def load(path: str | Path) -> dict[str, Any]:
    """A checkpoint or weights file as a dict, never executing anything stored in it."""
    path = Path(path)
    if not path.is_file():
        raise KdzooError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        name = _unsafe_global(path, exc)
        if name is None:
            raise KdzooError(f"checkpoint {path} cannot be read (not a tensor-only torch file)") from None
        raise KdzooError(
            f"checkpoint {path} refused: loading it would import '{name}', which can run code; kdzoo only loads "
            f"tensors and plain containers (save weights with torch.save(model.state_dict()) or as .safetensors)"
        ) from None
    except Exception as exc:
        raise KdzooError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}); is it a kdzoo/torch file?"
        ) from None
    if not isinstance(data, dict):
        raise KdzooError(f"checkpoint {path} does not hold a state dict")
    return data


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise KdzooError(f"safetensors file {path} cannot be read ({first_line(exc)})") from None


def _unsafe_global(path: Path, exc: Exception) -> str | None:
    """The first global the file asks for that is not allowed, read without running anything."""
    if zipfile.is_zipfile(path):
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # a damaged archive: fall back to what the unpickler said
            found = []
        if found:
            return found[0]
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return match.group(1) if match else None


def model_state(data: dict[str, Any]) -> dict[str, Any]:
    """The model weights in a kdzoo checkpoint or in a plain state-dict file."""
    for key in ("student", "model", "state_dict"):
        if isinstance(data.get(key), dict):
            return data[key]
    return data


def rng_state() -> dict[str, Any]:
    """Every RNG state kdzoo draws from, as tensors and plain lists (loadable with weights_only)."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
