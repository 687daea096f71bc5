"""An epoch's running totals: the loss and every term, summed on the device (no host sync per step),
with the first step at which each became NaN/inf."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kdzoo.api import KdzooError, Stage
from kdzoo.data import DistInfo
from kdzoo.engine.distributed import any_across, mean_across
from kdzoo.reporting import significant


class EpochTotals:
    def __init__(self, partial: dict[str, Any] | None = None):
        partial = partial or {}
        self.sums: dict[str, Tensor] = {k: torch.tensor(v) for k, v in partial.get("sums", {}).items()}
        self.seen = partial.get("seen", 0)  # images trained in this epoch, before a resume included
        self.seen_before = self.seen  # ...of which this process trained none (its rate leaves them out)
        self.skipped = partial.get("skipped", 0)
        self.first_bad: dict[str, Tensor] = {}  # term -> first step where it was NaN/inf, on the device

    def add(self, step: int, loss: Tensor | None, terms: dict[str, Tensor], batch: int) -> None:
        """Count one step; ``loss`` is ``None`` for a step skipped as non-finite."""
        if loss is None:
            self.skipped += 1
            return
        self.seen += batch
        for name, value in {"loss": loss, **terms}.items():
            value = value.detach()
            self.sums[name] = self.sums.get(name, 0.0) + value
            bad = self.first_bad.get(name, torch.tensor(-1))
            self.first_bad[name] = torch.where((bad < 0) & ~torch.isfinite(value), step + 1, bad)

    def partial(self) -> dict[str, Any]:
        """What a mid-epoch checkpoint keeps, so the resumed epoch logs the same means."""
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "seen": self.seen, "skipped": self.skipped}

    def running_means(self, steps_done: int) -> dict[str, str]:
        return {k: f"{(v / max(steps_done, 1)).item():.4g}" for k, v in self.sums.items()}

    def rate(self, seconds: float) -> float:
        return (self.seen - self.seen_before) / max(seconds, 1e-9)

    def means(self, steps: int, dist: DistInfo) -> dict[str, float]:
        """Per-step means over the epoch, averaged over processes, to 7 significant digits."""
        counted = max(steps - self.skipped, 1)
        return {k: significant(float(v) / counted) for k, v in mean_across(self.sums, dist).items()}

    def stop_if_nonfinite(self, stage: Stage, epoch: int, run_dir: Path, dist: DistInfo) -> None:
        """A one-line error naming the first step and term that went NaN/inf (on any process)."""
        bad = {name: int(step) for name, step in self.first_bad.items() if int(step) > 0}
        if not any_across(bool(bad), dist):
            return
        bad = bad or {"loss (on another process)": 0}
        step = min(bad.values())
        terms = sorted(n for n, s in bad.items() if s == step and n != "loss") or ["loss"]
        last = run_dir / "last.pt"
        kept = f"the last good checkpoint is kept ({last})" if last.is_file() else "no checkpoint was written yet"
        raise KdzooError(
            f"stage '{stage.name}' epoch {epoch + 1} step {step}: loss term {', '.join(map(repr, terms))} "
            f"became NaN/inf; {kept}; lower optim.lr or the term's weight, or set train.nonfinite=skip"
        )
