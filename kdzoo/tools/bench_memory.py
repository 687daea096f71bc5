"""How much memory a training step needs on top of what was in use before it.

Two readings per step: the **tensor peak** (the high-water mark of memory held by tensors, exact and
repeatable: it is what a method adds) and the **resident peak** (what the process or the CUDA
caching allocator actually held, which also counts allocator slack and freed pages not yet given
back, so it is noisy at small scale).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

Step = Callable[[], None]


def tensor_peak_mb(step: Step, device: torch.device, steps: int = 2, prepare: Step | None = None) -> float:
    """Tensor-memory high-water mark of one step, above what tensors held when it began (the largest
    over ``steps`` steps). ``prepare`` runs before each step, outside the measurement: the benchmark
    frees the gradients there, so every variant starts from the same state whether or not its own
    loop frees them between steps.

    On CUDA the caching allocator keeps the count; on the CPU the profiler's allocation events
    are replayed in order.
    """
    prepare = prepare or (lambda: None)
    if device.type == "cuda":
        peak = 0
        for _ in range(steps):
            prepare()
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            _run(step, 1, device)
            peak = max(peak, torch.cuda.max_memory_allocated(device) - before)
        return peak / 2**20
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr(), profiler:
        step()  # frees of blocks from before profiling go unreported: one step first makes them all known
        for _ in range(steps):
            prepare()
            with torch.profiler.record_function(_WINDOW):
                step()
    events = profiler.profiler.kineto_results.events()
    windows = sorted((e.start_ns(), e.end_ns()) for e in events if e.name() == _WINDOW)
    allocations = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    return max(_window_peak(allocations, start, end) for start, end in windows) / 2**20


_WINDOW = "kdzoo.tools.bench.measured_step"


def _window_peak(allocations: list[tuple[int, int]], start: int, end: int) -> int:
    """Highest level reached within [start, end] above the level at ``start``, replaying (time, bytes)."""
    level = before = 0
    inside: list[int] = []
    for when, nbytes in allocations:
        if when > end:
            break
        level += nbytes
        if when < start:
            before = level
        else:
            inside.append(level)
    return max([before, *inside]) - before


def resident_peak_mb(step: Step, device: torch.device, steps: int = 2) -> float:
    """The resident high-water mark during ``steps`` steps, above the resident size before them.

    On CUDA: memory reserved by the caching allocator; on the CPU: the process's VmHWM, reset
    through ``/proc/self/clear_refs`` (NaN where the kernel does not offer that).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()  # blocks cached by earlier variants would hide what this one reserves
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_reserved(device)
        _run(step, steps, device)
        return (torch.cuda.max_memory_reserved(device) - before) / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed blocks back so the baseline is honest
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        return float("nan")
    before = _status_mb("VmRSS")
    _run(step, steps, device)
    return _status_mb("VmHWM") - before


def _run(step: Step, steps: int, device: torch.device) -> None:
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ start/stop lines, which bypass Python's logging."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
