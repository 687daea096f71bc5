"""Folders that two processes must never write at once: run directories and cache entries.

A run directory is claimed by creating it (``mkdir`` fails if it exists, atomically), then held
through the run by an OS file lock (released by the kernel when the process dies, even by
SIGKILL). A cache entry is written under its lock; a second process waits, then reuses it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from kdzoo.errors import KdzooError, RunBusy


def claim_new_run_dir(base: Path) -> Path:
    """Create ``base``, or ``base-2``, ``base-3``... whichever does not exist yet, atomically: two
    runs started together never get the same folder, and an earlier run is never overwritten."""
    candidate, n = base, 1
    while True:
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")
        except OSError as exc:
            raise KdzooError(unwritable(candidate, exc)) from None


def check_writable(folder: Path) -> None:
    """Fail before any work when runs cannot be written under ``folder``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".kdzoo-write-check-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise KdzooError(unwritable(folder, exc)) from None


def unwritable(path: Path, exc: OSError) -> str:
    reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
    return f"cannot write to {path} ({reason}); set train.out_dir to a writable folder"


class RunDirLock:
    """Held while a process trains in a run directory; a second process is refused at once."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._lock = FileLock(str(run_dir / ".lock"))

    def __enter__(self) -> RunDirLock:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(timeout=0)
        except Timeout:
            why = f"run directory {self.run_dir} is in use by another kdzoo process; wait for it to finish"
            raise RunBusy(why) from None
        except OSError as exc:
            raise KdzooError(unwritable(self.run_dir, exc)) from None
        return self

    def __exit__(self, *exc_info) -> None:
        self._lock.release()


@contextlib.contextmanager
def writing(entry: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold cache entry ``entry`` (a folder) while it is written; another process waits for it.

    The lock file sits beside the entry, so it can be taken before the entry exists."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(entry.with_name(entry.name + ".lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_wait is not None:
            on_wait()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
