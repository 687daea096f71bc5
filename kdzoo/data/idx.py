"""The idx files of MNIST-style datasets (Fashion-MNIST), read straight from ``.gz`` or plain files.

Reading the originals directly means no unpacked copy to go stale when ``data.root`` changes, and
every way such a file can be wrong (not idx, truncated, not gzip) is one line naming the file.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from kdzoo.errors import KdzooError

UNSIGNED_BYTE = 0x08  # the only element type MNIST-style datasets use


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes with ``ndim`` dimensions (3 for images, 1 for labels)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise KdzooError(f"{path} cannot be read ({exc}); is the download complete?") from None
    magic = raw[:4]
    expected = bytes([0, 0, UNSIGNED_BYTE, ndim])
    if magic != expected:
        raise KdzooError(
            f"{path} is not an idx file of {ndim}-d bytes: magic number 0x{magic.hex() or '(empty)'}, "
            f"expected 0x{expected.hex()}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise KdzooError(f"{path} is truncated inside its header")
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise KdzooError(
            f"{path} is truncated or padded: its header promises {size} bytes of data for shape {shape}, "
            f"the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
