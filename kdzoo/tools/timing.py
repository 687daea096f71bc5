"""Timing what a deployed model costs: wall times repeated and reduced to a median with its spread, and
calls timed in turns so that a ratio of two compares the same moments of a busy machine.

Used by the trade-off table (:mod:`kdzoo.tools.tradeoff`) and by the int8 exporter, which measures its
candidates against fp32 before it chooses one (:mod:`kdzoo.tools.deploy`).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

THROUGHPUT_BATCH = 64
REPEATS = 20  # timed runs per measurement (after 3 warm-up runs); the median is reported


@dataclasses.dataclass(frozen=True)
class Measured:
    """Repeated measurements of one figure (milliseconds, or a ratio of two): the median is reported, and
    how far they spread says whether it is one figure at all (:data:`kdzoo.tools.leaderboard.SPREAD_LIMIT`)."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float | None:
        """Upper over lower quartile (1.0: all alike; None under two samples): the middle half, so one stall
        (a page fault, another process's time slice) moves a maximum, not this."""
        if len(self.samples) < 2:
            return None
        low, _, high = statistics.quantiles(self.samples, n=4, method="inclusive")
        return high / low if low > 0 else None


def timed(call: Callable[[], Any], repeats: int = REPEATS, warmup: int = 3) -> Measured:
    """The wall times of ``call`` in milliseconds, over ``repeats`` runs after ``warmup`` untimed ones."""
    with torch.inference_mode():
        for _ in range(warmup):
            call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(1000 * (time.perf_counter() - start))
    return Measured(times)


def interleaved(calls: dict[str, Callable[[], Any]], rounds: int, repeats: int, warmup: int = 3) -> dict[str, Measured]:
    """Each call's median time per round (milliseconds), the calls taking turns round after round: a busy
    spell of the machine then falls on all of them alike, and a ratio of two stays a ratio of the same
    moments (timing one, then the other, compares a quiet minute with a busy one)."""
    for call in calls.values():
        timed(call, repeats=0, warmup=warmup)
    medians: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            medians[name].append(timed(call, repeats, warmup=0).median)
    return {name: Measured(values) for name, values in medians.items()}
