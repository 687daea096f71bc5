"""torchdistill's own training step for a kdzoo stack (``kdzoo bench --torchdistill``): :mod:`.configs`
writes the torchdistill config of a stack, :mod:`.adapter` builds and runs it."""

from kdzoo_benchmarks.torchdistill.adapter import (
    TORCHDISTILL_METHODS,
    TorchdistillStep,
    torchdistill_available,
    torchdistill_config,
    torchdistill_step,
    torchdistill_supports,
)

__all__ = [
    "TORCHDISTILL_METHODS",
    "TorchdistillStep",
    "torchdistill_available",
    "torchdistill_config",
    "torchdistill_step",
    "torchdistill_supports",
]
